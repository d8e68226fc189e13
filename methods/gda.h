// gda: Gaussian discriminant analysis on CLIP features (Wang et al., "A Hard-to-Beat
// Baseline for Training-free CLIP-based Adaptation", ICLR 2024; PROMPT_LEARNERS.md §5.2).
// The support bank keeps every one of `augment_epochs` augmented views (crops of scale
// 0.5-1 in the recipe) of each few-shot image, L2-normalised. Class means mu_k and one
// shared precision Lambda (the official "KS" shrinkage: D pinv((N-1) S + tr(S) I)) give a
// linear classifier w_k = Lambda mu_k, b_k = log(1/C) - mu_k^T Lambda mu_k / 2, added to
// the zero-shot logits:  logits = 100 f t^T + alpha (f w^T + b).
//
// Selection (train.selection): with `val`, alpha is the first strict maximum of validation
// accuracy over the paper's grid {1e-4 .. 100}; with `none`, `alpha` is used (1, the
// middle of the grid: the paper gives no validation-free value). The official scripts
// choose ImageNet's alpha on its test set; here nothing ever sees test labels.
// Differences from the official code: the precision is computed in float64; with
// shrinkage = none a singular covariance is an error instead of a silent pseudo-inverse;
// on classes without support images (base-to-new's new half) the method is zero-shot
// (the paper's novel-class estimator from text-nearest neighbours is not implemented).
#pragma once
#include <vlmadapt/adapt/fewshot.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::methods {

struct GdaOptions {
  int augment_epochs = 10;
  double alpha = 1;  // used with train.selection = none
  std::vector<double> alpha_grid = {1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100};
  fewshot::Shrinkage shrinkage = fewshot::Shrinkage::Ks;
  std::vector<std::string> templates;
  void bind(OptionSet& s) {
    s.add("augment_epochs", augment_epochs, "augmented views of each support image, all kept in the bank (0 = the test view)")
        .at_least(0)
        .add("alpha", alpha, "weight of the GDA logits when nothing is searched (train.selection = none)").at_least(0)
        .add("alpha_grid", alpha_grid, "alpha values searched on the validation split (train.selection = val), '|'-separated")
        .add("shrinkage", shrinkage,
             "precision estimator: ks = D pinv((N-1) S + tr(S) I) (the paper's); none = S^-1, an error when S is singular")
        .add("templates", templates, fewshot::TextClassifier::kHelp);
  }
};

class Gda : public fewshot::TextAdapter {
 public:
  explicit Gda(const GdaOptions& options) : TextAdapter(options.templates, options.augment_epochs), options_(options) {
    weight_ = register_data_buffer("weight", torch::zeros({0}));
    bias_ = register_data_buffer("bias", torch::zeros({0}));
    alpha_ = register_buffer("alpha", torch::full({}, options.alpha, torch::kDouble));
  }

  using Method::fit;
  void fit(const FitData& data) override {
    torch::NoGradGuard no_grad;
    if (data.images() == 0) throw Error("gda: the support set is empty");
    fit_text(data);
    const auto device = clip_->logit_scale().device();
    auto bank = fewshot::normalized(data.support.features);
    auto g = fewshot::gda_fit(bank, data.support.labels, classifier_.size(0), options_.shrinkage);
    weight_.set_data(g.weight.to(device));
    bias_.set_data(g.bias.to(device));
    alpha_.fill_(options_.alpha);
    if (data.selection == Selection::Val) {
      if (data.val.features.size(0) == 0) throw Error("gda: alpha is searched on the validation split, which is empty");
      auto f = fewshot::normalized(data.val.features).to(device);
      alpha_.fill_(fewshot::search_alpha(zero_shot(f), gda_logits(f), data.val.labels, options_.alpha_grid));
    }
  }

  torch::Tensor logits(const Batch& batch) override {
    auto f = fewshot::normalized(batch.image_features);
    if (weight_.numel() == 0 || !fitted_for_task()) return zero_shot(f);  // no support for these classes
    return zero_shot(f) + alpha_.item<double>() * gda_logits(f);
  }

  std::map<std::string, double> chosen() const override { return {{"alpha", alpha_.item<double>()}}; }

 private:
  torch::Tensor gda_logits(const torch::Tensor& f) const { return torch::addmm(bias_, f, weight_.t()); }

  GdaOptions options_;
  torch::Tensor weight_, bias_, alpha_;
};

VLMADAPT_REGISTER_METHOD(Gda, GdaOptions, "gda",
                         "GDA: Gaussian discriminant analysis on CLIP features added to zero-shot; alpha on validation")

}  // namespace vlmadapt::methods
