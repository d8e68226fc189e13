// lp_pp: LP++ (Huang et al., CVPR 2024; PROMPT_LEARNERS.md §6). A linear probe whose
// class weights are visual prototypes plus a learned per-class multiple of the text
// classifier:  logits = f W^T + b + alpha_k (f t_k),  f and t normalised, no logit scale.
// Trained full-batch on the cached support features (one augmented view per image, crops
// of scale 0.5-1 in the recipe) for `iterations` steps, with step sizes from the data:
//   W, b: SGD with momentum 0.9 and lr 4N / lambda_max(F^T F);
//   alpha: a gradient step of lr N / (4 max_k sum_i (f_i t_k)^2) every `alpha_every` steps.
// Initialisation: W = class sums of the support features, b ~ U(-1/sqrt(D), 1/sqrt(D))
// (PyTorch's Linear default, drawn from data.seed), alpha = 250 x the mean over classes of
// the class's mean zero-shot cosine.
//
// Where this follows the paper and not the code: alpha's step uses the gradient at the
// current point (the paper's block update); the official code never zeroes alpha's
// gradient, so its step uses the gradient summed since the start: `cumulative_alpha_grad =
// true` reproduces that.
// Selection (train.selection): with `val`, the state kept is that of the last iteration
// whose validation accuracy is at least the best so far (the official rule, on the K-shot
// validation split); with `none`, the last iteration.
#pragma once
#include <cmath>

#include <vlmadapt/adapt/fewshot.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::methods {

struct LpPpOptions {
  int iterations = 300;
  int alpha_every = 10;
  double alpha_init_scale = 250;
  bool cumulative_alpha_grad = false;
  int augment_epochs = 1;
  std::vector<std::string> templates;
  void bind(OptionSet& s) {
    s.add("iterations", iterations, "full-batch training iterations").at_least(1)
        .add("alpha_every", alpha_every, "iterations between two steps of the text multipliers alpha").at_least(1)
        .add("alpha_init_scale", alpha_init_scale, "alpha starts at this times the mean zero-shot cosine of the support set")
        .add("cumulative_alpha_grad", cumulative_alpha_grad,
             "step alpha with its gradient summed since the start (the official code's unzeroed gradient) instead of "
             "the current one (the paper)")
        .add("augment_epochs", augment_epochs, "augmented views of each support image (0 = the test view)").at_least(0)
        .add("templates", templates, fewshot::TextClassifier::kHelp);
  }
};

class LpPp : public fewshot::TextAdapter {
 public:
  explicit LpPp(const LpPpOptions& options) : TextAdapter(options.templates, options.augment_epochs), options_(options) {
    weight_ = register_data_buffer("weight", torch::zeros({0}));
    bias_ = register_data_buffer("bias", torch::zeros({0}));
    alpha_ = register_data_buffer("alpha", torch::zeros({0}));
    iteration_ = register_buffer("iteration", torch::zeros({}, torch::kLong));
  }

  using Method::fit;
  void fit(const FitData& data) override {
    if (data.images() == 0) throw Error("lp_pp: the support set is empty");
    fit_text(data);
    const auto device = classifier_.device();
    auto f = fewshot::normalized(data.support.features).to(device);
    auto y = data.support.labels.to(device);
    const bool select = data.selection == Selection::Val && data.val.features.size(0) > 0;
    auto val_f = select ? fewshot::normalized(data.val.features).to(device) : torch::Tensor();
    train(f, y, val_f, select ? data.val.labels.to(device) : torch::Tensor());
  }

  torch::Tensor logits(const Batch& batch) override {
    if (weight_.numel() == 0) throw Error("lp_pp: not fitted (no support features were given)");
    auto f = fewshot::normalized(batch.image_features);
    if (!fitted_for_task()) return zero_shot(f);  // classes it was not fitted for (base-to-new's new half)
    return forward(f, weight_, bias_, alpha_);
  }

  std::map<std::string, double> chosen() const override { return {{"iteration", static_cast<double>(iteration_.item<int64_t>())}}; }

 private:
  torch::Tensor forward(const torch::Tensor& f, const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& alpha) const {
    return scores(f, w, b, alpha, f.mm(classifier_.t()));
  }
  // The same with the text cosines f·Tᵀ given (training holds them: they do not change).
  static torch::Tensor scores(const torch::Tensor& f, const torch::Tensor& w, const torch::Tensor& b,
                              const torch::Tensor& alpha, const torch::Tensor& text_cos) {
    return torch::addmm(b, f, w.t()) + alpha * text_cos;
  }

  void train(const torch::Tensor& f, const torch::Tensor& y, const torch::Tensor& val_f, const torch::Tensor& val_y) {
    const int64_t n = f.size(0), d = f.size(1), classes = classifier_.size(0);
    auto text_cos = f.mm(classifier_.t());  // [N,C]
    // Initialisation (§6.2): class sums, PyTorch's Linear bias draw, alpha from the zero-shot cosine.
    auto w = torch::zeros({classes, d}, f.options()).index_add_(0, y, f);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed_);
    auto b = (torch::rand({classes}, gen, torch::kFloat) * 2 - 1).div(std::sqrt(static_cast<double>(d))).to(f.device());
    auto own = text_cos.gather(1, y.unsqueeze(1)).squeeze(1);
    auto per_class = torch::zeros({classes}, f.options()).index_add_(0, y, own) /
                     torch::bincount(y, {}, classes).clamp_min(1).to(f.dtype());
    auto alpha = torch::full({classes}, options_.alpha_init_scale * per_class.mean().item<double>(), f.options());
    // Step sizes from the data (§6.3).
    const double lr_w = 4.0 * n / torch::linalg_eigvalsh(f.t().mm(f).to(torch::kDouble)).max().item<double>();
    const double lr_alpha = n / (4.0 * text_cos.pow(2).sum(0).max().item<double>());
    w.requires_grad_(true), b.requires_grad_(true), alpha.requires_grad_(true);
    auto buf_w = torch::zeros_like(w), buf_b = torch::zeros_like(b), alpha_grad_sum = torch::zeros_like(alpha);
    const auto val_cos = val_f.defined() ? val_f.mm(classifier_.t()) : torch::Tensor();
    double best = -1;
    int64_t kept = options_.iterations;
    auto keep = [&](int64_t it) {
      weight_.set_data(w.detach().clone()), bias_.set_data(b.detach().clone()), alpha_.set_data(alpha.detach().clone());
      kept = it;
    };
    for (int64_t it = 1; it <= options_.iterations; ++it) {
      auto loss = torch::nn::functional::cross_entropy(scores(f, w, b, alpha, text_cos), y);
      auto grads = torch::autograd::grad({loss}, {w, b, alpha});
      torch::NoGradGuard no_grad;
      // SGD with momentum (PyTorch's: buf = 0.9 buf + g, the first buf = g).
      buf_w = it == 1 ? grads[0] : buf_w * 0.9 + grads[0];
      buf_b = it == 1 ? grads[1] : buf_b * 0.9 + grads[1];
      w.sub_(lr_w * buf_w), b.sub_(lr_w * buf_b);
      alpha_grad_sum += grads[2];
      if (it % options_.alpha_every == 0) alpha.sub_(lr_alpha * (options_.cumulative_alpha_grad ? alpha_grad_sum : grads[2]));
      if (val_f.defined()) {
        const double acc = fewshot::accuracy(scores(val_f, w, b, alpha, val_cos), val_y);
        if (acc >= best) best = acc, keep(it);
      }
    }
    if (!val_f.defined()) keep(options_.iterations);
    iteration_.fill_(kept);
  }

  LpPpOptions options_;
  torch::Tensor weight_, bias_, alpha_, iteration_;
};

VLMADAPT_REGISTER_METHOD(LpPp, LpPpOptions, "lp_pp",
                         "LP++: a linear probe plus per-class multiples of the text classifier, full-batch with data-derived steps")

}  // namespace vlmadapt::methods
