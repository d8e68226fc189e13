#include <vlmadapt/adapt/fewshot.h>

#include <algorithm>
#include <cmath>

#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::fewshot {

torch::Tensor normalized(const torch::Tensor& rows) {
  auto f = rows.to(torch::kFloat);
  return f / f.norm(2, -1, true);
}

double accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (logits.size(0) == 0) return 0;
  return logits.argmax(-1).eq(labels.to(logits.device())).to(torch::kDouble).mean().item<double>();
}

std::vector<double> tip_grid(double lo, double hi, int n) {
  std::vector<double> grid;
  for (int i = 0; i < n; ++i) grid.push_back(lo + i * (hi - lo) / n);
  return grid;
}

torch::Tensor tip_cache_logits(const torch::Tensor& affinity, const torch::Tensor& values, int64_t classes, double beta) {
  auto kernel = (-beta * (1 - affinity)).exp();
  return torch::zeros({affinity.size(0), classes}, kernel.options()).index_add_(1, values.to(kernel.device()), kernel);
}

namespace {

// The affinity's columns grouped by class, padded to the largest class: [N, C*K] with
// padding columns of -1e30 (a kernel of exactly 0 for beta > 0), so that the per-class
// sum of the kernel is a contiguous reduction instead of a scatter over 10^4 columns.
torch::Tensor grouped_affinity(const torch::Tensor& affinity, const torch::Tensor& values, int64_t classes, int64_t* per_class) {
  auto v = values.to(torch::kCPU);
  auto counts = torch::bincount(v, {}, classes);
  const int64_t k = std::max<int64_t>(1, counts.max().item<int64_t>());
  *per_class = k;
  const int64_t pad = affinity.size(1);  // the index of the padding column
  std::vector<int64_t> index(classes * k, pad), next(classes, 0);
  auto va = v.accessor<int64_t, 1>();
  for (int64_t j = 0; j < v.size(0); ++j) index[va[j] * k + next[va[j]]++] = j;
  auto padded = torch::cat({affinity, torch::full({affinity.size(0), 1}, -1e30, affinity.options())}, 1);
  return padded.index_select(1, torch::tensor(index, torch::kLong).to(affinity.device()));
}

// How many rows of `zero_shot + alpha * cache` have the label as their argmax, for each
// alpha, without scoring every alpha: row i is right exactly when, for every other class
// c, alpha (cache_y - cache_c) > zero_shot_c - zero_shot_y, i.e. when alpha lies in an
// interval (lo, hi) computed once per row (c with d = cache_y - cache_c > 0 bounds it from
// below by e / d, d < 0 from above; d = 0 needs e < 0, or e = 0 and y before c, the
// argmax's tie rule). Boundaries hit exactly by a grid value are ties of measure zero.
void count_right_over_alpha(const torch::Tensor& zero_shot, const torch::Tensor& cache, const torch::Tensor& labels,
                            const torch::Tensor& alphas, torch::Tensor counts_row) {
  auto y = labels.unsqueeze(1);
  auto d = cache.gather(1, y) - cache;
  auto e = zero_shot - zero_shot.gather(1, y);
  auto cls = torch::arange(zero_shot.size(1), labels.options()).unsqueeze(0);
  auto ratio = e / d;
  auto lo = std::get<0>(ratio.masked_fill(d <= 0, -INFINITY).max(1));
  auto hi = std::get<0>(ratio.masked_fill(d >= 0, INFINITY).min(1));
  auto blocked = (d == 0) & ((e > 0) | ((e == 0) & (cls < y))) & (cls != y);
  auto feasible = blocked.any(1).logical_not();
  auto right = (lo.unsqueeze(1) < alphas.unsqueeze(0)) & (alphas.unsqueeze(0) < hi.unsqueeze(1)) & feasible.unsqueeze(1);
  counts_row.add_(right.sum(0));
}

}  // namespace

TipChoice tip_search(const torch::Tensor& zero_shot, const torch::Tensor& affinity, const torch::Tensor& values,
                     const torch::Tensor& labels, const std::vector<double>& alphas, const std::vector<double>& betas) {
  torch::NoGradGuard no_grad;
  TipChoice best;
  if (alphas.empty() || betas.empty() || zero_shot.size(0) == 0) return best;
  for (double beta : betas)
    if (!(beta > 0)) throw Error("tip_adapter: the beta grid must be positive, got " + std::to_string(beta));
  const auto target = labels.to(zero_shot.device());
  const int64_t classes = zero_shot.size(1), rows = zero_shot.size(0);
  int64_t per_class = 1;
  auto shifted = grouped_affinity(affinity, values, classes, &per_class) - 1;  // A - 1, grouped
  auto grid = torch::tensor(alphas, zero_shot.options().dtype(torch::kDouble)).to(zero_shot.dtype());
  auto counts = torch::zeros({static_cast<int64_t>(betas.size()), static_cast<int64_t>(alphas.size())}, torch::kLong);
  // Blocks of rows small enough that a block's kernel stays in cache across the betas.
  const int64_t block = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, shifted.size(1)));
  // On an evenly spaced beta grid (the official one) the kernel of the next beta is this
  // one times exp(step (A - 1)): one product instead of an exponential; it is recomputed
  // directly every 16 betas, so rounding never builds up beyond a few units in the last place.
  bool even = betas.size() > 1;
  for (size_t b = 2; b < betas.size() && even; ++b)
    even = std::abs((betas[b] - betas[b - 1]) - (betas[1] - betas[0])) <= 1e-9 * std::abs(betas[1] - betas[0]);
  for (int64_t start = 0; start < rows; start += block) {
    const int64_t n = std::min(block, rows - start);
    auto a = shifted.narrow(0, start, n), zs = zero_shot.narrow(0, start, n), y = target.narrow(0, start, n);
    auto kernel = torch::empty_like(a);
    auto step = even ? (a * (betas[1] - betas[0])).exp_() : torch::Tensor();
    for (size_t b = 0; b < betas.size(); ++b) {
      if (even && b % 16 != 0) kernel.mul_(step);
      else at::mul_out(kernel, a, betas[b]).exp_();
      count_right_over_alpha(zs, kernel.view({n, classes, per_class}).sum(-1), y, grid, counts[b]);
    }
  }
  auto acc = counts.to(torch::kDouble) / static_cast<double>(rows);
  auto table = acc.accessor<double, 2>();
  for (size_t b = 0; b < betas.size(); ++b)
    for (size_t j = 0; j < alphas.size(); ++j)
      if (table[b][j] > best.accuracy) best = {alphas[j], betas[b], table[b][j]};
  return best;
}

torch::Tensor class_means(const torch::Tensor& features, const torch::Tensor& labels, int64_t classes) {
  auto sums = torch::zeros({classes, features.size(1)}, features.options()).index_add_(0, labels, features);
  auto counts = torch::bincount(labels, {}, classes).clamp_min(1).to(features.dtype());
  return sums / counts.unsqueeze(1);
}

GdaClassifier gda_fit(const torch::Tensor& features, const torch::Tensor& labels, int64_t classes, Shrinkage shrinkage) {
  torch::NoGradGuard no_grad;
  // In double: the precision matrix of 512 nearly collinear directions loses digits in
  // float (the official code runs float32 on the GPU; the difference is in the last bits).
  auto f = features.to(torch::kDouble);
  const int64_t n = f.size(0), e = f.size(1);
  if (n < 2) throw Error("gda: " + std::to_string(n) + " support feature(s); the covariance needs at least 2");
  auto mu = class_means(f, labels, classes);
  auto x = f - mu.index_select(0, labels);
  x = x - x.mean(0, true);  // torch.cov centres on the mean of the centred rows (~0)
  auto s = x.t().mm(x) / static_cast<double>(n - 1);
  torch::Tensor precision;
  if (shrinkage == Shrinkage::Ks) {
    auto eye = torch::eye(e, s.options());
    precision = static_cast<double>(e) * torch::linalg_pinv((n - 1) * s + s.trace() * eye);
  } else {
    auto eig = torch::linalg_eigvalsh(s);
    const double lo = eig.min().item<double>(), hi = eig.max().item<double>();
    if (!(lo > 1e-12 * std::max(hi, 1e-300)))
      throw Error("gda: the covariance of " + std::to_string(n) + " support features of dimension " + std::to_string(e) + " in " +
                  std::to_string(classes) + " classes is singular (it needs more than E + C linearly independent ones); "
                  "set gda.shrinkage = ks (the paper's estimator)");
    precision = torch::linalg_inv(s);
  }
  auto w = mu.mm(precision);
  auto b = std::log(1.0 / static_cast<double>(classes)) - 0.5 * (w * mu).sum(1);
  return {w.to(torch::kFloat), b.to(torch::kFloat)};
}

double search_alpha(const torch::Tensor& base, const torch::Tensor& extra, const torch::Tensor& labels,
                    const std::vector<double>& grid, double* best_accuracy) {
  double best = -1, chosen = grid.empty() ? 0 : grid.front();
  for (double alpha : grid) {
    const double acc = accuracy(torch::add(base, extra, alpha), labels);
    if (acc > best) best = acc, chosen = alpha;
  }
  if (best_accuracy) *best_accuracy = best;
  return chosen;
}

// ---- ZPE ---------------------------------------------------------------------

torch::Tensor zpe_scores(const torch::Tensor& text, const torch::Tensor& test, const torch::Tensor& pretrain, double scale,
                         ZpeDebias debias) {
  torch::NoGradGuard no_grad;
  if (test.size(0) == 0) throw Error("zpe: no test images to score the prompts on");
  const bool uses_pre = debias == ZpeDebias::Both || debias == ZpeDebias::Pretrain;
  if (uses_pre && (!pretrain.defined() || pretrain.size(0) == 0))
    throw Error("zpe: the debias mode needs pretraining-distribution images (zpe.pretrain_images)");
  // The mean logit over a set of images is the logit of their mean feature (linearity).
  auto mean_logits = [&](const torch::Tensor& images) { return scale * text.matmul(images.mean(0)); };  // [P,C]
  auto correction = torch::zeros({text.size(0), text.size(1)}, text.options());
  if (debias == ZpeDebias::Test) correction = mean_logits(test);
  if (debias == ZpeDebias::Pretrain) correction = mean_logits(pretrain);
  if (debias == ZpeDebias::Both) correction = 0.5 * (mean_logits(test) + mean_logits(pretrain));
  std::vector<torch::Tensor> scores;
  for (int64_t p = 0; p < text.size(0); ++p) {
    auto logits = scale * test.mm(text[p].t()) - correction[p];
    scores.push_back(std::get<0>(logits.max(1)).mean());
  }
  return torch::stack(scores);
}

double median_of(const torch::Tensor& x) {
  auto sorted = std::get<0>(x.to(torch::kDouble).flatten().sort());
  const int64_t n = sorted.size(0);
  if (n == 0) return 0;
  if (n % 2) return sorted[n / 2].item<double>();
  return 0.5 * (sorted[n / 2 - 1].item<double>() + sorted[n / 2].item<double>());
}

double median_abs_deviation(const torch::Tensor& x) { return median_of((x.to(torch::kDouble) - median_of(x)).abs()); }

torch::Tensor zpe_select(const torch::Tensor& scores, double tau) {
  auto kept = torch::ones_like(scores, torch::kBool);
  if (tau <= 0) return kept;
  const double mad = median_abs_deviation(scores);
  if (mad > 0) kept = (scores.to(torch::kDouble) - median_of(scores)) / mad > tau;
  if (mad <= 0 || !kept.any().item<bool>()) {
    kept = torch::zeros_like(scores, torch::kBool);
    kept[scores.argmax().item<int64_t>()] = true;
  }
  return kept;
}

torch::Tensor zpe_weights(const torch::Tensor& scores, const torch::Tensor& kept) {
  auto masked = scores.to(torch::kDouble).masked_fill(kept.logical_not(), -std::numeric_limits<double>::infinity());
  return torch::softmax(masked, 0).to(scores.dtype());
}

torch::Tensor weighted_classifier(const torch::Tensor& text, const torch::Tensor& weights) {
  return (text * weights.to(text.dtype()).view({-1, 1, 1})).sum(0);
}

// ---- TextClassifier ----------------------------------------------------------

void TextClassifier::setup(const TaskContext& task) {
  clip_ = task.clip;
  if (uses_zpe()) {
    const auto pool = task.templates.empty() ? std::vector<std::string>{"a photo of a {}."} : task.templates;
    per_prompt_ = template_text_features(clip_, task.tokenizer, task.classnames, pool, /*normalise=*/true);
  } else {
    ensemble_ = class_text_features(clip_, task.tokenizer, task.classnames, resolve_templates(templates_, task));
  }
}

torch::Tensor TextClassifier::zpe_prompt_weights(const torch::Tensor& unlabelled) const {
  if (!uses_zpe()) return {};
  if (!unlabelled.defined() || unlabelled.size(0) == 0) throw Error("templates = zpe: no unlabelled test features to weigh the prompts on");
  const double scale = clip_->logit_scale().exp().item<double>();
  auto scores = zpe_scores(per_prompt_, normalized(unlabelled).to(per_prompt_.device()), {}, scale, ZpeDebias::Test);
  return zpe_weights(scores, zpe_select(scores, 0));
}

torch::Tensor TextClassifier::weights(const torch::Tensor& prompt_weights) const {
  if (!uses_zpe()) return ensemble_;
  if (!prompt_weights.defined() || prompt_weights.numel() != per_prompt_.size(0))
    throw Error("templates = zpe: the prompt weights are not fitted (" + std::to_string(per_prompt_.size(0)) + " prompts)");
  return weighted_classifier(per_prompt_, prompt_weights.to(per_prompt_.device()));
}

// ---- TextAdapter -------------------------------------------------------------

TextAdapter::TextAdapter(std::vector<std::string> templates, int support_views)
    : text_(std::move(templates)), support_views_(support_views) {
  prompt_weights_ = register_data_buffer("prompt_weights", torch::zeros({0}));
}

Contract TextAdapter::contract() const {
  Contract c{Input::Features, /*fits=*/true};
  c.support_views = support_views_;
  c.unlabelled_test = text_.uses_zpe();
  return c;
}

void TextAdapter::setup(const TaskContext& task) {
  clip_ = task.clip;
  seed_ = task.seed;
  text_.setup(task);
  classnames_ = task.classnames;
  if (!text_.uses_zpe() || prompt_weights_.numel() > 0) classifier_ = text_.weights(prompt_weights_);
}

void TextAdapter::on_state_loaded() {
  classifier_ = text_.weights(prompt_weights_);
  fitted_classnames_ = classnames_;
}

void TextAdapter::fit_text(const FitData& data) {
  torch::NoGradGuard no_grad;
  prompt_weights_.set_data(text_.uses_zpe() ? text_.zpe_prompt_weights(data.unlabelled) : torch::zeros({0}));
  classifier_ = text_.weights(prompt_weights_);
  fitted_classnames_ = classnames_;
}

}  // namespace vlmadapt::fewshot
