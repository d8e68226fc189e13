// zeroshot: CLIP's zero-shot classifier from hand-written prompts (Radford et al. 2021).
// One template, or a template ensemble: per class the average of the L2-normalised
// per-template text features, renormalised. Training-free.
#pragma once
#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

struct ZeroshotOptions {
  std::vector<std::string> templates;  // empty: the dataset's first template; "ensemble": all of them
  void bind(OptionSet& s) {
    s.add("templates", templates,
          "prompt templates with {} for the class name, separated by '|'; empty = the dataset's "
          "default template, 'ensemble' = all of the dataset's templates");
  }
};

class Zeroshot : public Method {
 public:
  explicit Zeroshot(const ZeroshotOptions& options) : options_(options) {}

  Contract contract() const override { return {}; }  // frozen features, nothing learned
  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    classifier_ = class_text_features(clip_, task.tokenizer, task.classnames, resolve_templates(options_.templates, task));
  }
  torch::Tensor logits(const Batch& batch) override { return cosine_logits(clip_, batch.image_features, classifier_); }

 private:
  ZeroshotOptions options_;
  Clip clip_{nullptr};
  torch::Tensor classifier_;  // [C,E], normalised; derived from the task
};

VLMADAPT_REGISTER_METHOD(Zeroshot, ZeroshotOptions, "zeroshot",
                         "CLIP zero-shot classification from one prompt template or an ensemble")

}  // namespace vlmadapt::methods
