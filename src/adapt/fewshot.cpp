#include <vlmadapt/adapt/fewshot.h>

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

TipChoice tip_search(const torch::Tensor& zero_shot, const torch::Tensor& affinity, const torch::Tensor& values,
                     const torch::Tensor& labels, const std::vector<double>& alphas, const std::vector<double>& betas) {
  torch::NoGradGuard no_grad;
  TipChoice best;
  const auto target = labels.to(zero_shot.device());
  for (double beta : betas) {
    auto cache = tip_cache_logits(affinity, values, zero_shot.size(1), beta);
    for (double alpha : alphas) {
      const double acc = torch::add(zero_shot, cache, alpha).argmax(-1).eq(target).to(torch::kDouble).mean().item<double>();
      if (acc > best.accuracy) best = {alpha, beta, acc};
    }
  }
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

}  // namespace vlmadapt::fewshot
