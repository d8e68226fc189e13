// rlcf: Reinforcement Learning with CLIP Feedback at test time (Zhao et al., ICLR 2024;
// mzhaoshuai/RLCF). Per test image, as TPT: views, and the 10% of lowest entropy chosen
// once. Each step samples the policy's top-3 classes per kept view, scores each with a
// second, frozen CLIP: reward = 2.5 * max(cos(view, "a photo of a {class}."), 0), takes
// each view's mean reward over its samples as the baseline, and minimises the
// REINFORCE-weighted cross-entropy. AdamW, weight decay 5e-4, 3 steps; reset after every
// image. Two variants (rlcf.variant):
//   prompt: tune the 4 context vectors (lr 7e-3, recipes/rlcf/rlcf.ini);
//   image:  tune the image tower (lr 1e-5, recipes/rlcf/rlcf_image.ini), or only its
//           normalisation layers with rlcf.norm_only; the text side is the fixed
//           "a photo of a {class}." classifier. Its weights are restored after each image.
// The reward model is any checkpoint load_clip reads (rlcf.reward_model); the official
// default is ViT-L/14. Left empty, the policy's own frozen CLIP gives the reward.
// Views reach the reward model bicubically resized to its resolution, as the official code.
// Differences from the official code: fp32 on CPU; in the image variant the first step
// selects views with a forward pass without gradients and then runs the kept views again
// with gradients, which gives the same loss and gradients (the tower is in eval mode, so
// views do not interact) for a fraction of the memory.
#pragma once
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/tta.h>
#include <vlmadapt/adapt/tta_prompt.h>

namespace vlmadapt::methods {

struct RlcfOptions {
  TunedPromptOptions tuning = [] {
    TunedPromptOptions t;
    t.lr = 7e-3;
    t.weight_decay = 5e-4;
    t.steps = 3;
    return t;
  }();
  std::string variant = "prompt";
  bool norm_only = false;
  std::string reward_model;  // a checkpoint, "default", or empty for the policy's own CLIP
  double reward_weight = 2.5;
  int64_t sample_k = 3;
  double selection = 0.1;
  void bind(OptionSet& s) {
    tuning.bind(s);
    s.add("variant", variant, "what is tuned: prompt (context vectors) or image (the image tower)", {"prompt", "image"});
    s.add("norm_only", norm_only, "image variant: tune only the normalisation layers of the image tower");
    s.add("reward_model", reward_model, "the reward CLIP's checkpoint ('default' = built-in; empty = the policy's own)");
    s.add("reward_weight", reward_weight, "CLIPScore weight w in w * max(cos, 0)");
    s.add("sample_k", sample_k, "classes sampled per view: the policy's top-k");
    s.add("selection", selection, "share of views kept by lowest entropy");
  }
};

class Rlcf : public Method {
 public:
  explicit Rlcf(const RlcfOptions& options) : options_(options), prompt_(options.tuning) {}

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (options_.sample_k < 1) throw Error("rlcf.sample_k: expected at least 1, got " + std::to_string(options_.sample_k));
    if (!reward_clip_) {
      LoadOptions lo;
      lo.device = task.device.str();
      reward_clip_ = options_.reward_model.empty() ? clip_ : load_clip(resolve_checkpoint(options_.reward_model), lo);
    }
    torch::NoGradGuard no_grad;
    reward_text_ = class_text_features(reward_clip_, task.tokenizer, task.classnames, {"a photo of a {}."});
    if (options_.variant == "prompt") return prompt_.setup(*this, task);
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
  std::vector<torch::Tensor> trainable_parameters() override { return {}; }
  bool needs_pixels() const override { return options_.variant == "image"; }
  bool adapts_per_sample() const override { return true; }

  torch::Tensor logits(const Batch& batch) override {
    if (options_.variant == "prompt") return cosine_logits(clip_, batch.image_features, prompt_.classifier());
    return cosine_logits(clip_, clip_->encode_image(batch.pixels), text_);
  }

  torch::Tensor adapt_and_predict(const Batch& views) override {
    return options_.variant == "prompt" ? adapt_prompt(views) : adapt_image(views);
  }

 private:
  // Reward-model features of the kept views, at the reward model's resolution.
  torch::Tensor reward_features(const torch::Tensor& pixels) {
    torch::NoGradGuard no_grad;
    const int64_t r = reward_clip_->image_resolution();
    auto px = pixels;
    if (px.size(-1) != r)
      px = torch::nn::functional::interpolate(
          px, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{r, r}).mode(torch::kBicubic).align_corners(false));
    return reward_clip_->encode_image(px);
  }

  torch::Tensor step_loss(const torch::Tensor& logits, const torch::Tensor& reward_image) {
    auto sampled = std::get<1>(logits.detach().topk(std::min<int64_t>(options_.sample_k, logits.size(1)), -1));
    auto rewards = tta::clip_reward(reward_image, reward_text_, sampled, options_.reward_weight);
    return tta::reinforce_loss(logits, sampled, rewards);
  }

  torch::Tensor adapt_prompt(const Batch& views) {
    if (!views.pixels.defined()) throw Error("rlcf: the reward model needs the views' pixels");
    prompt_.begin_image();
    const auto& features = views.image_features;
    torch::Tensor kept, reward_image;
    for (int step = 0; step < options_.tuning.steps; ++step) {
      auto classifier = prompt_.classifier();
      if (!kept.defined()) {
        kept = tta::confident_views(cosine_logits(clip_, features, classifier), options_.selection);
        reward_image = reward_features(views.pixels.index_select(0, kept));
      }
      prompt_.step(step_loss(cosine_logits(clip_, features.index_select(0, kept), classifier), reward_image));
    }
    torch::NoGradGuard no_grad;
    return cosine_logits(clip_, features.narrow(0, 0, 1), prompt_.classifier());
  }

  torch::Tensor adapt_image(const Batch& views) {
    // Episodic: the tower leaves as it came, even when a step throws. It came in restored,
    // so there is no copy before the image (for ViT-B/16, 344 MB per copy).
    struct RestoreAtExit {
      Rlcf* self;
      ~RestoreAtExit() {
        for (auto& p : self->tuned_) {
          p.set_requires_grad(false);
          p.mutable_grad() = torch::Tensor();
        }
        if (!self->options_.tuning.continual) self->restore();
      }
    } restore_at_exit{this};
    if (!optimizer_ || !options_.tuning.continual)
      optimizer_ = std::make_unique<torch::optim::AdamW>(
          tuned_, torch::optim::AdamWOptions(options_.tuning.lr).weight_decay(options_.tuning.weight_decay));
    torch::Tensor kept, reward_image;
    {
      torch::NoGradGuard no_grad;
      kept = tta::confident_views(cosine_logits(clip_, clip_->encode_image(views.pixels), text_), options_.selection);
      reward_image = reward_features(views.pixels.index_select(0, kept));
    }
    const auto px = views.pixels.index_select(0, kept);
    for (auto& p : tuned_) p.set_requires_grad(true);
    for (int step = 0; step < options_.tuning.steps; ++step) {
      optimizer_->zero_grad();
      step_loss(cosine_logits(clip_, clip_->encode_image(px), text_), reward_image).backward();
      optimizer_->step();
    }
    torch::NoGradGuard no_grad;
    return cosine_logits(clip_, clip_->encode_image(views.pixels.narrow(0, 0, 1)), text_);
  }

  void restore() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < tuned_.size(); ++i) tuned_[i].copy_(saved_[i]);
  }

  RlcfOptions options_;
  TunedPrompt prompt_;
  Clip clip_{nullptr}, reward_clip_{nullptr};
  torch::Tensor reward_text_, text_;        // normalised "a photo of a {class}." features
  std::vector<torch::Tensor> tuned_, saved_;  // image variant: tuned weights and their originals
  std::unique_ptr<torch::optim::AdamW> optimizer_;
};

VLMADAPT_REGISTER_METHOD(Rlcf, RlcfOptions, "rlcf",
                         "RLCF: tune the prompt or image tower per test image with rewards from a second CLIP")

}  // namespace vlmadapt::methods
