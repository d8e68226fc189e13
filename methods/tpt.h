// tpt: Test-time Prompt Tuning (Shu et al., NeurIPS 2022; azshue/TPT), with DiffTPT's
// view filter (Feng et al., ICCV 2023; chunmeifeng/DiffTPT) as an option.
// Per test image: the evaluator makes 64 views (view 0 the test view; crops and flips,
// AugMix'ed outside the ImageNet family; eval.views, eval.augmix) and the frozen image
// tower encodes them once. The context starts from "a photo of a" (or a CoOp run); the
// 10% of views with the lowest entropy are chosen at the first step and kept; each step
// minimises the entropy of their averaged probability (AdamW, lr 5e-3, 1 step); the
// prediction is the test view's logits with the tuned context. Context and optimizer are
// reset exactly after every image (tpt.continual carries them on instead).
// DiffTPT (tpt.cosine_selection > 0, recipes/tpt/difftpt.ini): first keep view 0 and the
// share of the other views whose logits are most cosine-similar to view 0's (0.8), then
// the lowest-entropy share of those (0.3), 4 steps. Extra views generated elsewhere come
// from eval.extra_views; without them the filter runs over the augmented views.
// Where we differ from the official code: fp32 on CPU (the official runs fp16 weights
// under autocast on GPU); the text tower runs once per step over all classes rather than
// once per view, which is the same computation (its input does not depend on the view).
#pragma once
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/tta.h>
#include <vlmadapt/adapt/tta_prompt.h>

namespace vlmadapt::methods {

struct TptOptions {
  TunedPromptOptions tuning;
  double selection = 0.1;         // share of views kept by lowest entropy
  double cosine_selection = 0.0;  // > 0: DiffTPT's filter by cosine similarity to view 0 first
  void bind(OptionSet& s) {
    tuning.bind(s);
    s.add("selection", selection, "share of views kept by lowest entropy (TPT 0.1; DiffTPT 0.3)").range(0, 1);
    s.add("cosine_selection", cosine_selection,
          "> 0: first keep view 0 and this share of the other views most similar to it (DiffTPT 0.8)").range(0, 1);
  }
};

class Tpt : public Method {
 public:
  explicit Tpt(const TptOptions& options) : options_(options), prompt_(options.tuning) {}

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    prompt_.setup(*this, task);
  }
  // Nothing is trained by the few-shot loop: all tuning happens per test image, from the
  // same prompt every time, or carried on from image to image with tpt.continual.
  Contract contract() const override {
    return {Input::Features, false, false, options_.tuning.continual ? Adaptation::Online : Adaptation::Episodic};
  }
  void on_state_loaded() override { prompt_.restart_from_current(); }
  torch::Tensor logits(const Batch& batch) override {
    return cosine_logits(clip_, batch.image_features, prompt_.classifier());
  }

  torch::Tensor adapt_and_predict(const Batch& views) override {
    prompt_.begin_image();
    const auto& features = views.image_features;
    torch::Tensor kept;
    for (int step = 0; step < options_.tuning.steps; ++step) {
      auto classifier = prompt_.classifier();
      if (!kept.defined()) kept = select(cosine_logits(clip_, features, classifier));  // once, at the first step
      prompt_.step(tuning_loss(features.index_select(0, kept), classifier));
    }
    torch::NoGradGuard no_grad;
    return cosine_logits(clip_, features.narrow(0, 0, 1), prompt_.classifier());
  }

 protected:
  // The loss of one step on the kept views' features, with the current class text
  // features `text`: TPT's marginal entropy (C-TPT adds its dispersion term).
  virtual torch::Tensor tuning_loss(const torch::Tensor& kept_features, const torch::Tensor& text) {
    return tta::marginal_entropy(cosine_logits(clip_, kept_features, text));
  }

 private:
  torch::Tensor select(const torch::Tensor& logits) const {
    if (options_.cosine_selection <= 0) return tta::confident_views(logits, options_.selection);
    auto similar = tta::similar_views(logits, options_.cosine_selection);
    return similar.index_select(0, tta::confident_views(logits.index_select(0, similar), options_.selection));
  }

  TptOptions options_;
  TunedPrompt prompt_;

 protected:
  Clip clip_{nullptr};
};

VLMADAPT_REGISTER_METHOD(Tpt, TptOptions, "tpt",
                         "TPT: tune the prompt per test image to minimise the entropy of confident views")

}  // namespace vlmadapt::methods
