// mta: MeanShift for Test-time Augmentation (Zanella & Ben Ayed, CVPR 2024; MaxZanella/MTA
// mta.py). TTA_ONLINE.md §6. Training-free.
// Per test image: the evaluator makes 64 views (view 0 the test view, then crops and
// flips, no AugMix on any dataset: eval.augmix = off in recipes/mta/mta.ini) and the
// frozen image tower encodes them once. On the normalised view embeddings x_i, MTA finds
// a robust mode m: each view has its own Gaussian bandwidth (from its 18 nearest other
// views) and an inlierness y_i; the affinity between views is the inner product of their
// softmax vectors (100 * cos against "a photo of a {}."). Starting from y = 1/V and
// m = x_0, it alternates 5 times: up to 5 steps y <- softmax((K(m) + 4 * A y) / 0.2), then
// up to 5 MeanShift steps m <- normalise(sum K_i(m) y_i x_i / sum K_i(m) y_i)
// (tta::meanshift_mode). The logits are exp(logit_scale) * m^T T.
// Where we follow the official code: the per-point bandwidth, the density computed once per
// outer iteration for the inlierness step and again at each mode step, the fixed outer
// count and the 1e-6 tolerance of the inner loops. The text is "a photo of a {}." encoded
// from the words (equal to TPT's untuned 4-token context, tests/test_methods.cpp
// Coop.InitialisedFromWordsEqualsTheHandWrittenPrompt); mta.templates = ensemble averages
// the dataset's templates instead (not in the paper).
// Where we differ: fp32 on CPU (the official solve runs in fp16 on GPU); for fewer than
// 5 views the neighbour count is at least 1 (the official k = 0 gives NaN); a duplicated
// view's zero bandwidth is floored, and a mode step whose weights all underflow keeps the
// mode (the official code would return NaN). The official lambda options are untyped on
// the command line (only their defaults work); here they are typed options.
// No parameters, nothing carried between images.
#pragma once
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/adapt/tta_episodic.h>


namespace vlmadapt::methods {

struct MtaOptions {
  std::vector<std::string> templates;  // empty: the dataset's first template; "ensemble": all
  MeanShiftOptions solver;
  void bind(OptionSet& s) {
    s.add("templates", templates,
          "prompt templates with {} for the class name, separated by '|'; empty = the dataset's default "
          "template, 'ensemble' = all of the dataset's templates");
    s.add("lambda_y", solver.lambda_y, "temperature of the inlierness softmax (official 0.2)").at_least(1e-6);
    s.add("lambda_q", solver.lambda_q, "weight of the view affinity in the inlierness step (official 4)").at_least(0);
    s.add("knn_fraction", solver.knn_fraction,
          "bandwidth neighbours: k = int(fraction * (views - 1)) nearest other views (official 0.3)")
        .range(0, 1);
    s.add("outer_iterations", solver.outer_iterations, "alternations of inlierness and mode steps (official 5)")
        .at_least(0);
    s.add("inlierness_iterations", solver.inlierness_iterations, "cap of each inlierness loop (official 5)")
        .at_least(0);
    s.add("mode_iterations", solver.mode_iterations, "cap of each MeanShift loop (official 5)").at_least(0);
    s.add("tolerance", solver.tolerance, "inner loops stop when the L2 change is below this (official 1e-6)")
        .at_least(0);
  }
};

class Mta : public Method {
 public:
  explicit Mta(const MtaOptions& options) : options_(options) {}

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
    const auto& features = views.image_features;
    const auto points = features / features.norm(2, -1, true);
    const auto probs = torch::softmax(cosine_logits(clip_, features, classifier_), -1);
    const auto solved = tta::meanshift_mode(points, probs, options_.solver);
    return cosine_logits(clip_, solved.mode.unsqueeze(0), classifier_);
  }

 private:
  MtaOptions options_;
  Clip clip_{nullptr};
  torch::Tensor classifier_;  // [C,E], normalised; derived from the task
};

VLMADAPT_REGISTER_METHOD(Mta, MtaOptions, "mta",
                         "MTA: the MeanShift mode of the augmented views' embeddings, weighted by inlierness")

}  // namespace vlmadapt::methods
