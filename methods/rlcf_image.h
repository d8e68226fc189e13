// rlcf_image: RLCF's image-tower variant (mzhaoshuai/RLCF TPT/scripts/rlcf-tune.sh,
// tune_cls_rl.py). Per test image, the image tower is tuned (lr 1e-5, 3 AdamW steps,
// weight decay 5e-4) against the fixed "a photo of a {class}." classifier with the
// rewards of methods/rlcf.h, and restored after every image; rlcf_image.norm_only tunes
// only its normalisation layers.
// Differences from the official code: fp32 on CPU; the first step selects views with a
// forward pass without gradients and then runs the kept views again with gradients, which
// gives the same loss and gradients (the tower is in eval mode, so views do not interact)
// for a fraction of the memory. The tuned weights are the shared tower's own, changed in
// place and restored from a copy after each image (no copy before: they come in restored).
#pragma once
#include "rlcf.h"

namespace vlmadapt::methods {

struct RlcfImageOptions {
  double lr = 1e-5;
  double weight_decay = 5e-4;
  int steps = 3;
  bool norm_only = false;
  RlcfRewardOptions reward;
  void bind(OptionSet& s) {
    s.add("lr", lr, "AdamW learning rate").at_least(0);
    s.add("weight_decay", weight_decay, "AdamW weight decay").at_least(0);
    s.add("steps", steps, "optimisation steps per test image").at_least(0);
    s.add("norm_only", norm_only, "tune only the normalisation layers of the image tower");
    reward.bind(s);
  }
};

class RlcfImage : public Method {
 public:
  explicit RlcfImage(const RlcfImageOptions& options) : options_(options), reward_(options.reward) {}

  Contract contract() const override { return {Input::Pixels, false, false, Adaptation::Episodic}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    reward_.setup(task);
    torch::NoGradGuard no_grad;
    text_ = class_text_features(clip_, task.tokenizer, task.classnames, {"a photo of a {}."});
    tuned_.clear();
    saved_.clear();
    for (const auto& item : clip_->visual()->named_parameters(true)) {
      const auto& k = item.key();
      // LayerNorms (ViT) and BatchNorms (ResNet, the downsample's is its item 1).
      const bool norm = k.find("ln_") != std::string::npos || k.find("bn") != std::string::npos ||
                        k.find("downsample.1.") != std::string::npos;
      if (options_.norm_only && !norm) continue;
      tuned_.push_back(item.value());
      saved_.push_back(item.value().detach().clone());
    }
  }

  torch::Tensor logits(const Batch& batch) override {
    return cosine_logits(clip_, clip_->encode_image(batch.pixels), text_);
  }

  torch::Tensor adapt_and_predict(const Batch& views) override {
    // Episodic: the tower leaves as it came, even when a step throws.
    struct RestoreAtExit {
      RlcfImage* self;
      ~RestoreAtExit() { self->restore(); }
    } restore_at_exit{this};
    torch::optim::AdamW optimizer(tuned_, torch::optim::AdamWOptions(options_.lr).weight_decay(options_.weight_decay));
    torch::Tensor kept, reward_image;
    {
      torch::NoGradGuard no_grad;
      kept = tta::confident_views(cosine_logits(clip_, clip_->encode_image(views.pixels), text_), options_.reward.selection);
      reward_image = reward_.image_features(views.pixels.index_select(0, kept));
    }
    const auto px = views.pixels.index_select(0, kept);
    for (auto& p : tuned_) p.set_requires_grad(true);
    for (int step = 0; step < options_.steps; ++step) {
      optimizer.zero_grad();
      reward_.step_loss(cosine_logits(clip_, clip_->encode_image(px), text_), reward_image).backward();
      optimizer.step();
    }
    torch::NoGradGuard no_grad;
    return cosine_logits(clip_, clip_->encode_image(views.pixels.narrow(0, 0, 1)), text_);
  }

 private:
  void restore() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < tuned_.size(); ++i) {
      tuned_[i].set_requires_grad(false);
      tuned_[i].mutable_grad() = torch::Tensor();
      tuned_[i].copy_(saved_[i]);
    }
  }

  RlcfImageOptions options_;
  RlcfReward reward_;
  Clip clip_{nullptr};
  torch::Tensor text_;                        // normalised "a photo of a {class}." features
  std::vector<torch::Tensor> tuned_, saved_;  // the tuned weights and their originals
};

VLMADAPT_REGISTER_METHOD(RlcfImage, RlcfImageOptions, "rlcf_image",
                         "RLCF: tune the image tower per test image with rewards from a second CLIP")

}  // namespace vlmadapt::methods
