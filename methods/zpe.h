// zpe: zero-shot prompt ensembling by weighting (Allingham et al., ICML 2023; METHODS.md
// §10). Each prompt template p gets a score from unlabelled images only,
//   s_p = mean over test images of max_c (l_{i,p,c} - correction_{p,c}),
// l = 100 cos(image, text(p, c)), the correction being the mean logit over the test images
// and over pretraining-distribution images (debias = both, the paper's ZPE; test or pretrain
// alone; none = the max-logit baseline). The classifier is sum_p softmax(s)_p text_p
// (temperature 1); with tau > 0 only the prompts whose MAD z-score (s_p - median) / MAD
// exceeds tau are kept (the paper: 0.5 for ImageNet and its variants, 2 for fine-grained
// datasets; when none passes, the best one alone).
//
// Transductive and label-free: fit() gets the test images' features without labels
// (contract().unlabelled_test), as the paper scores on the test set's images; nothing is
// selected with labels, so train.selection does not apply. The pretraining images are a
// folder the user names (zpe.pretrain_images; the paper used the first 20,000 LAION-400M
// images); debias = auto uses both when it is given, else the test mean alone.
// The other adapters take ZPE's weighting as their text classifier with `templates = zpe`.
#pragma once
#include <vlmadapt/adapt/fewshot.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/data/dataset.h>

namespace vlmadapt::methods {

enum class ZpePool { Dataset, All };
inline const std::vector<std::pair<ZpePool, std::string>>& enum_names(ZpePool) {
  static const std::vector<std::pair<ZpePool, std::string>> n{{ZpePool::Dataset, "dataset"}, {ZpePool::All, "all"}};
  return n;
}
enum class ZpeDebiasMode { Auto, Both, Test, Pretrain, None };
inline const std::vector<std::pair<ZpeDebiasMode, std::string>>& enum_names(ZpeDebiasMode) {
  static const std::vector<std::pair<ZpeDebiasMode, std::string>> n{{ZpeDebiasMode::Auto, "auto"},
                                                                   {ZpeDebiasMode::Both, "both"},
                                                                   {ZpeDebiasMode::Test, "test"},
                                                                   {ZpeDebiasMode::Pretrain, "pretrain"},
                                                                   {ZpeDebiasMode::None, "none"}};
  return n;
}

struct ZpeOptions {
  ZpePool pool = ZpePool::Dataset;
  ZpeDebiasMode debias = ZpeDebiasMode::Auto;
  double tau = 0;
  std::string pretrain_images;
  int pretrain_limit = 20000;
  void bind(OptionSet& s) {
    s.add("pool", pool, "prompt pool: the dataset's templates, or all: the union of every built-in dataset's")
        .add("debias", debias,
             "logit correction: both = half the test and pretraining means (the paper), test, pretrain, none "
             "(max-logit); auto = both with pretrain_images, else test")
        .add("tau", tau, "MAD selection threshold; 0 = weight every prompt (ImageNet 0.5, fine-grained 2)").at_least(0)
        .add("pretrain_images", pretrain_images, "folder of pretraining-distribution images (any layout) for the pretrain mean")
        .add("pretrain_limit", pretrain_limit, "at most this many of them (sorted by path)").at_least(1);
  }
};

class Zpe : public Method {
 public:
  explicit Zpe(const ZpeOptions& options) : options_(options) {
    prompt_weights_ = register_data_buffer("prompt_weights", torch::zeros({0}));
    scores_ = register_data_buffer("scores", torch::zeros({0}));
  }

  Contract contract() const override {
    Contract c{Input::Features, /*fits=*/true};
    c.support_views = -1;  // no support set: unlabelled images only
    c.unlabelled_test = true;
    return c;
  }
  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    const auto pool = options_.pool == ZpePool::All ? builtin_template_pool()
                      : task.templates.empty()      ? std::vector<std::string>{"a photo of a {}."}
                                                    : task.templates;
    text_ = template_text_features(clip_, task.tokenizer, task.classnames, pool, /*normalise=*/true);
  }

  using Method::fit;
  void fit(const FitData& data) override {
    torch::NoGradGuard no_grad;
    if (!data.unlabelled.defined() || data.unlabelled.size(0) == 0) throw Error("zpe: no test images to weigh the prompts on");
    const auto debias = resolved_debias();
    torch::Tensor pretrain;
    if (debias == fewshot::ZpeDebias::Both || debias == fewshot::ZpeDebias::Pretrain) pretrain = pretrain_features();
    const double scale = clip_->logit_scale().exp().item<double>();
    auto scores = fewshot::zpe_scores(text_, fewshot::normalized(data.unlabelled).to(text_.device()), pretrain, scale, debias);
    scores_.set_data(scores);
    prompt_weights_.set_data(fewshot::zpe_weights(scores, fewshot::zpe_select(scores, options_.tau)));
  }

  torch::Tensor logits(const Batch& batch) override {
    if (prompt_weights_.numel() != text_.size(0))
      throw Error("zpe: the prompt weights are not fitted for this pool (" + std::to_string(text_.size(0)) + " prompts)");
    auto classifier = fewshot::weighted_classifier(text_, prompt_weights_);
    return clip_->logit_scale().exp() * fewshot::normalized(batch.image_features).mm(classifier.t());
  }

  std::map<std::string, double> chosen() const override {
    return {{"prompts", static_cast<double>(prompt_weights_.numel())},
            {"prompts_kept", prompt_weights_.gt(0).sum().item<double>()},
            {"top_weight", prompt_weights_.numel() ? prompt_weights_.max().item<double>() : 0.0}};
  }

 private:
  fewshot::ZpeDebias resolved_debias() const {
    switch (options_.debias) {
      case ZpeDebiasMode::Auto: return options_.pretrain_images.empty() ? fewshot::ZpeDebias::Test : fewshot::ZpeDebias::Both;
      case ZpeDebiasMode::Both: return fewshot::ZpeDebias::Both;
      case ZpeDebiasMode::Test: return fewshot::ZpeDebias::Test;
      case ZpeDebiasMode::Pretrain: return fewshot::ZpeDebias::Pretrain;
      case ZpeDebiasMode::None: return fewshot::ZpeDebias::None;
    }
    return fewshot::ZpeDebias::Test;
  }

  // Normalised features of the pretraining images (test view).
  torch::Tensor pretrain_features() const {
    if (options_.pretrain_images.empty())
      throw Error("zpe.debias: the pretraining mean needs zpe.pretrain_images (a folder of images)");
    Dataset images = open_image_folder(options_.pretrain_images, "zpe.pretrain_images");
    if (static_cast<int64_t>(images.test.size()) > options_.pretrain_limit) images.test.resize(options_.pretrain_limit);
    LoaderOptions loader;
    loader.n_px = static_cast<int>(clip_->image_resolution());
    loader.batch_size = 100;
    auto clip = clip_;
    return fewshot::normalized(compute_features(clip, images, images.test, loader).features).to(text_.device());
  }

  ZpeOptions options_;
  Clip clip_{nullptr};
  torch::Tensor text_;                      // [P,C,E] normalised, derived from the task
  torch::Tensor prompt_weights_, scores_;   // [P], fitted
};

VLMADAPT_REGISTER_METHOD(Zpe, ZpeOptions, "zpe",
                         "ZPE: zero-shot prompt weighting from unlabelled images (test mean, optional pretraining mean)")

}  // namespace vlmadapt::methods
