// zero: ZERO, test-time augmentation with zero temperature (Farina et al., NeurIPS 2024;
// FarinaMatteo/zero ttas/zero.py, utils/tools.py). TTA_ONLINE.md §5.
// Per test image: the evaluator makes 64 views (view 0 the test view, then crops and
// flips, no AugMix on any dataset: eval.augmix = off in recipes/zero/zero.ini) and the
// frozen image tower encodes them once. Logits 100 * cos against "a photo of a {}."
// (zero.templates = ensemble for the paper's "+Ensemble"); the int(64 * 0.3) = 19 views of
// lowest entropy are kept, and each votes for its argmax: the zero-temperature softmax
// of the official code is a one-hot, so its sum is the argmax count (tta::zero_vote).
// The prediction is the class with most votes. A tie goes to the first discarded view,
// most confident first, whose argmax is tied (+1 vote); if none is, to the argmax of the
// first discarded view's logits restricted to the tied classes.
// Where we follow the paper and where the official code:
// - Tie-break (zero.tie_break): "intended" follows the spec and the paper's intent. The
//   official code scans the views with index >= k in their original order (not by
//   entropy) and its fallback masks the wrong classes (bitwise NOT of an index tensor),
//   so it can return an untied class; "official" reproduces both, for comparisons.
// - Precision: fp32 on CPU; the official runs fp16 under autocast, where the
//   zero-temperature softmax splits exact fp16 ties evenly. Here each view's argmax is
//   counted (the first of exactly equal logits), which differs only on exact ties.
// - gamma = 0.3 is the official code's value ("updated from the previous value of 0.1",
//   ttas/zero.py); the first arXiv version of the paper says 0.1.
// What it returns: the official score vector is the vote count v. We return log(v / sum v)
// (classes without a vote at log 1e-8), whose argmax is argmax v, with the same top-k
// order among voted classes, and whose softmax, which the evaluator uses for ECE, is the
// vote share: the confidence of a prediction is the share of confident views that agree
// (after a tie-break, the winner's extra vote counts: (n + 1) / (k + 1)).
// Votes themselves as logits would make the softmax confidence ~1 for any margin >= 5.
// No parameters, nothing carried between images.
#pragma once
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/adapt/tta_episodic.h>


namespace vlmadapt::methods {

struct ZeroOptions {
  std::vector<std::string> templates;  // empty: the dataset's first template; "ensemble": all
  double keep_fraction = 0.3;          // gamma: share of views kept by lowest entropy
  ZeroTieBreak tie_break = ZeroTieBreak::Intended;
  void bind(OptionSet& s) {
    s.add("templates", templates,
          "prompt templates with {} for the class name, separated by '|'; empty = the dataset's default "
          "template, 'ensemble' = all of the dataset's templates (the paper's +Ensemble)");
    s.add("keep_fraction", keep_fraction, "gamma: share of views of lowest entropy that vote (official 0.3)")
        .range(0, 1);
    s.add("tie_break", tie_break,
          "intended: first discarded view by entropy, else restricted argmax; official: the shipped code's "
          "index-order scan and masking bug");
  }
};

class Zero : public Method {
 public:
  explicit Zero(const ZeroOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Features, false, false, Adaptation::Episodic}; }
  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    torch::NoGradGuard no_grad;
    classifier_ = class_text_features(clip_, task.tokenizer, task.classnames, resolve_templates(options_.templates, task));
  }
  // Without views (plain evaluation): zero-shot logits.
  torch::Tensor logits(const Batch& batch) override { return cosine_logits(clip_, batch.image_features, classifier_); }

  torch::Tensor adapt_and_predict(const Batch& views) override {
    torch::NoGradGuard no_grad;
    const auto vote = tta::zero_vote(cosine_logits(clip_, views.image_features, classifier_), options_.keep_fraction,
                                     options_.tie_break);
    return tta::vote_share_logits(vote.votes);
  }

 private:
  ZeroOptions options_;
  Clip clip_{nullptr};
  torch::Tensor classifier_;  // [C,E], normalised; derived from the task
};

VLMADAPT_REGISTER_METHOD(Zero, ZeroOptions, "zero",
                         "ZERO: majority vote of the argmaxes of the most confident augmented views")

}  // namespace vlmadapt::methods
