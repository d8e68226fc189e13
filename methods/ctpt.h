// ctpt: C-TPT, Calibrated Test-time Prompt Tuning (Yoon et al., ICLR 2024;
// hee-suk-yoon/C-TPT tpt_classification.py, clip/custom_clip.py). TTA_ONLINE.md §7.
// TPT (methods/tpt.h) plus a text-feature dispersion term. Per test image: 64 views
// (view 0 the test view, crops and flips, AugMix outside the ImageNet family: the
// fine-grained scripts' rule, eval.augmix = auto; the natural-shift scripts also AugMix the
// ImageNet variants, eval.augmix = on). The context starts from "a photo of a" (4 vectors);
// one forward with the current context gives the class text features t_c (normalised);
// the 10% of views with the lowest entropy are chosen at the first step and kept; the loss
// is TPT's marginal entropy of the kept views minus lambda * ATFD, with
// ATFD = mean_c ||t_c - mean_c' t_c'|| (tta::text_dispersion) of those same text features;
// one AdamW step (lr 5e-3, weight decay 0.01); the prediction is the test view's logits
// with the tuned context. Context and optimizer are reset exactly after every image, by
// the TunedPrompt that TPT uses. Ctpt is Tpt with its step's loss replaced, so TPT's
// options (ctx_init, lr, steps, selection, cosine_selection, ...) apply to it too.
// lambda (ctpt.lambda): 50 in the official fine-grained scripts (ImageNet included),
// 20 in the natural-shift scripts (ImageNet-A, -V2, -R, -Sketch).
// Where we follow the official code: the ATFD is computed on the normalised text features
// of the forward that gives the TPT loss (the official model stores it in that forward),
// the centroid is not renormalised, and with lambda = 0 the method is TPT exactly.
// Where we differ: fp32 on CPU, no GradScaler (the official AMP scaler unscales the
// gradient before the AdamW step, so without overflow it changes nothing); the official
// `--two_step` (off in every script) is not implemented.
#pragma once
#include <vlmadapt/adapt/tta_episodic.h>

#include "methods/tpt.h"

namespace vlmadapt::methods {

struct CtptOptions {
  TptOptions tpt;
  double lambda = 50.0;  // weight of the dispersion term
  void bind(OptionSet& s) {
    tpt.bind(s);
    s.add("lambda", lambda,
          "weight of the text-feature dispersion (ATFD) subtracted from the loss: 50 for fine-grained sets "
          "and ImageNet, 20 for the natural shifts A, V2, R, Sketch (official scripts)")
        .at_least(0);
  }
};

class Ctpt : public Tpt {
 public:
  explicit Ctpt(const CtptOptions& options) : Tpt(options.tpt), lambda_(options.lambda) {}

  // L = marginal entropy of the kept views - lambda * ATFD of the class text features.
  torch::Tensor calibrated_loss(const torch::Tensor& kept_features, const torch::Tensor& text) {
    return Tpt::tuning_loss(kept_features, text) - lambda_ * tta::text_dispersion(text);
  }

 protected:
  torch::Tensor tuning_loss(const torch::Tensor& kept_features, const torch::Tensor& text) override {
    return calibrated_loss(kept_features, text);
  }

 private:
  double lambda_;
};

VLMADAPT_REGISTER_METHOD(Ctpt, CtptOptions, "ctpt",
                         "C-TPT: TPT's entropy minus lambda times the dispersion of the class text features")

}  // namespace vlmadapt::methods
