// clap: CLass-Adaptive linear Probing (Silva-Rodriguez et al., CVPR 2024;
// PROMPT_LEARNERS.md §7), and ZS-LP with constraint = none. Learned prototypes W [C,E],
// initialised to the zero-shot prototypes T (per class, the mean of the raw text features
// over the templates), score s cos(f, w_c) with s = 100 frozen; the loss is
//   CE + (1/C) sum_c lambda_c ||w_c - t_c||^2     (raw, unnormalised vectors)
// with lambda_c fixed before training: the mean zero-shot probability of class c over the
// support bank's images of class c (its `augment_epochs` = 20 augmented views each).
// Trained by the shared loop on cached views (recipe: train.feature_views = 20, crops of
// scale 0.08-1, SGD lr 0.1, momentum 0.9, no weight decay, batch 256, 300 epochs, cosine
// after one constant warmup epoch at 1e-5).
//
// Validation-free by design (CLAP's argument: K labelled images per class leave nothing to
// validate on): the last epoch is kept and nothing is searched, whatever train.selection.
// Differences from the official code: an epoch draws one cached view of every support
// image (the shared loop's cached epoch) where the official epoch draws
// max(1, floor(K C / 256)) batches of 256 from the whole bank; with K C <= 256 both take
// one step per epoch.
#pragma once
#include <vlmadapt/adapt/fewshot.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::methods {

enum class ClapConstraint { L2, Balanced, None };
inline const std::vector<std::pair<ClapConstraint, std::string>>& enum_names(ClapConstraint) {
  static const std::vector<std::pair<ClapConstraint, std::string>> n{
      {ClapConstraint::L2, "l2"}, {ClapConstraint::Balanced, "balanced"}, {ClapConstraint::None, "none"}};
  return n;
}

struct ClapOptions {
  ClapConstraint constraint = ClapConstraint::L2;
  int augment_epochs = 20;
  std::vector<std::string> templates;
  void bind(OptionSet& s) {
    s.add("constraint", constraint,
          "l2 = CLAP (lambda_c from the zero-shot confidence on the support set); balanced = lambda 1; none = ZS-LP "
          "(cross-entropy only)")
        .add("augment_epochs", augment_epochs, "augmented views of each support image for lambda (0 = the test view)")
        .at_least(0)
        .add("templates", templates,
             "prompt templates with {} for the class name, '|'-separated; empty = the dataset's first; 'ensemble' = all "
             "of the dataset's (raw features averaged)");
  }
};

class Clap : public Method {
 public:
  explicit Clap(const ClapOptions& options) : options_(options) {
    prototypes_ = register_data_parameter("prototypes", torch::zeros({0}));
    base_ = register_data_buffer("base", torch::zeros({0}));
    lambda_ = register_data_buffer("lambda", torch::zeros({0}));
  }

  Contract contract() const override {
    Contract c{Input::Features, /*fits=*/true, /*trains=*/true};
    c.support_views = options_.augment_epochs;
    return c;
  }
  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    // T: the raw text features averaged over the templates (CLAP keeps them unnormalised).
    zero_shot_prototypes_ = template_text_features(clip_, task.tokenizer, task.classnames,
                                                   resolve_templates(options_.templates, task), /*normalise=*/false)
                                .mean(0);
    classnames_ = task.classnames;
  }
  void on_state_loaded() override { fitted_classnames_ = classnames_; }

  using Method::fit;
  void fit(const FitData& data) override {
    torch::NoGradGuard no_grad;
    if (data.images() == 0) throw Error("clap: the support set is empty");
    prototypes_.set_data(zero_shot_prototypes_.clone());
    base_.set_data(zero_shot_prototypes_.clone());
    lambda_.set_data(multipliers(data.support));
    fitted_classnames_ = classnames_;
  }

  torch::Tensor logits(const Batch& batch) override {
    // Classes it was not fitted for (base-to-new's new half) get the zero-shot prototypes.
    auto w = prototypes_.numel() > 0 && classnames_ == fitted_classnames_ ? prototypes_ : zero_shot_prototypes_;
    return clip_->logit_scale().exp() * fewshot::normalized(batch.image_features).mm(fewshot::normalized(w).t());
  }

  torch::Tensor loss(const Batch& batch) override {
    auto ce = torch::nn::functional::cross_entropy(logits(batch), batch.labels);
    if (options_.constraint == ClapConstraint::None) return ce;
    auto distance = (prototypes_ - base_).pow(2).sum(1);  // [C]
    return ce + (lambda_ * distance).mean();
  }

  // lambda_c: the mean zero-shot softmax probability of class c over its support images.
  torch::Tensor multipliers(const FeatureSet& support) const {
    const int64_t c = zero_shot_prototypes_.size(0);
    if (options_.constraint == ClapConstraint::Balanced) return torch::ones({c}, zero_shot_prototypes_.options());
    auto f = fewshot::normalized(support.features).to(zero_shot_prototypes_.device());
    auto y = support.labels.to(f.device());
    auto probs = torch::softmax(clip_->logit_scale().exp() * f.mm(fewshot::normalized(zero_shot_prototypes_).t()), 1);
    auto own = probs.gather(1, y.unsqueeze(1)).squeeze(1);
    return torch::zeros({c}, f.options()).index_add_(0, y, own) / torch::bincount(y, {}, c).clamp_min(1).to(f.dtype());
  }

 private:
  ClapOptions options_;
  Clip clip_{nullptr};
  std::vector<std::string> classnames_, fitted_classnames_;
  torch::Tensor zero_shot_prototypes_;        // [C,E] raw, derived from the task
  torch::Tensor prototypes_, base_, lambda_;  // learned [C,E]; fixed [C,E], [C]
};

VLMADAPT_REGISTER_METHOD(Clap, ClapOptions, "clap",
                         "CLAP: a zero-shot-initialised linear probe held near the text prototypes, validation-free")

}  // namespace vlmadapt::methods
