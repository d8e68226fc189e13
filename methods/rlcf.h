// rlcf: Reinforcement Learning with CLIP Feedback at test time (Zhao et al., ICLR 2024;
// mzhaoshuai/RLCF), prompt variant. Per test image, as TPT: views, and the 10% of lowest
// entropy chosen once. Each step samples the policy's top-3 classes per kept view, scores
// each with a second, frozen CLIP: reward = 2.5 * max(cos(view, "a photo of a {class}."), 0),
// takes each view's mean reward over its samples as the baseline, and minimises the
// REINFORCE-weighted cross-entropy. AdamW on the 4 context vectors, lr 7e-3, weight decay
// 5e-4, 3 steps; reset after every image (rlcf.continual carries the prompt on).
// The image-tower variant is methods/rlcf_image.h; both share RlcfReward below.
// The reward model is any checkpoint load_clip reads (reward_model); the official
// default is ViT-L/14. Left empty, the policy's own frozen CLIP gives the reward.
// Views reach the reward model bicubically resized to its resolution, as the official code.
// Differences from the official code: fp32 on CPU.
#pragma once
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/tta.h>
#include <vlmadapt/adapt/tta_prompt.h>

namespace vlmadapt::methods {

// What both variants share: the reward model and how a step's loss is formed.
struct RlcfRewardOptions {
  std::string reward_model;  // a checkpoint, "default", or empty for the policy's own CLIP
  double reward_weight = 2.5;
  int64_t sample_k = 3;
  double selection = 0.1;
  void bind(OptionSet& s) {
    s.add("reward_model", reward_model, "the reward CLIP's checkpoint ('default' = built-in; empty = the policy's own)");
    s.add("reward_weight", reward_weight, "CLIPScore weight w in w * max(cos, 0)").at_least(0);
    s.add("sample_k", sample_k, "classes sampled per view: the policy's top-k").at_least(1);
    s.add("selection", selection, "share of views kept by lowest entropy").range(0, 1);
  }
};

class RlcfReward {
 public:
  explicit RlcfReward(RlcfRewardOptions options) : options_(std::move(options)) {}
  const RlcfRewardOptions& options() const { return options_; }

  // Loads the reward model once and encodes the task's "a photo of a {class}." prompts.
  void setup(const TaskContext& task) {
    if (!reward_clip_) {
      LoadOptions lo;
      lo.device = task.device.str();
      reward_clip_ = options_.reward_model.empty() ? task.clip : load_clip(resolve_checkpoint(options_.reward_model), lo);
    }
    torch::NoGradGuard no_grad;
    reward_text_ = class_text_features(reward_clip_, task.tokenizer, task.classnames, {"a photo of a {}."});
  }

  // Reward-model features of views, at the reward model's resolution.
  torch::Tensor image_features(const torch::Tensor& pixels) {
    torch::NoGradGuard no_grad;
    const int64_t r = reward_clip_->image_resolution();
    auto px = pixels;
    if (px.size(-1) != r)
      px = torch::nn::functional::interpolate(
          px, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{r, r}).mode(torch::kBicubic).align_corners(false));
    return reward_clip_->encode_image(px);
  }

  // REINFORCE loss of the policy's logits [V,C] on the kept views, rewarded by the
  // reward model's features of those views.
  torch::Tensor step_loss(const torch::Tensor& logits, const torch::Tensor& reward_image) const {
    auto sampled = std::get<1>(logits.detach().topk(std::min<int64_t>(options_.sample_k, logits.size(1)), -1));
    auto rewards = tta::clip_reward(reward_image, reward_text_, sampled, options_.reward_weight);
    return tta::reinforce_loss(logits, sampled, rewards);
  }

 private:
  RlcfRewardOptions options_;
  Clip reward_clip_{nullptr};
  torch::Tensor reward_text_;  // normalised "a photo of a {class}." features of the reward model
};

struct RlcfOptions {
  TunedPromptOptions tuning = [] {
    TunedPromptOptions t;
    t.lr = 7e-3;
    t.weight_decay = 5e-4;
    t.steps = 3;
    return t;
  }();
  RlcfRewardOptions reward;
  void bind(OptionSet& s) {
    tuning.bind(s);
    reward.bind(s);
  }
};

class Rlcf : public Method {
 public:
  explicit Rlcf(const RlcfOptions& options) : options_(options), prompt_(options.tuning), reward_(options.reward) {}

  Contract contract() const override {
    return {Input::Features, false, false, options_.tuning.continual ? Adaptation::Online : Adaptation::Episodic};
  }
  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    reward_.setup(task);
    prompt_.setup(*this, task);
  }
  void on_state_loaded() override { prompt_.restart_from_current(); }

  torch::Tensor logits(const Batch& batch) override {
    return cosine_logits(clip_, batch.image_features, prompt_.classifier());
  }

  torch::Tensor adapt_and_predict(const Batch& views) override {
    if (!views.pixels.defined()) throw Error("rlcf: the reward model needs the views' pixels");
    prompt_.begin_image();
    const auto& features = views.image_features;
    torch::Tensor kept, reward_image;
    for (int step = 0; step < options_.tuning.steps; ++step) {
      auto classifier = prompt_.classifier();
      if (!kept.defined()) {
        kept = tta::confident_views(cosine_logits(clip_, features, classifier), options_.reward.selection);
        reward_image = reward_.image_features(views.pixels.index_select(0, kept));
      }
      prompt_.step(reward_.step_loss(cosine_logits(clip_, features.index_select(0, kept), classifier), reward_image));
    }
    torch::NoGradGuard no_grad;
    return cosine_logits(clip_, features.narrow(0, 0, 1), prompt_.classifier());
  }

 private:
  RlcfOptions options_;
  TunedPrompt prompt_;
  RlcfReward reward_;
  Clip clip_{nullptr};
};

VLMADAPT_REGISTER_METHOD(Rlcf, RlcfOptions, "rlcf",
                         "RLCF: tune the prompt per test image with rewards from a second CLIP")

}  // namespace vlmadapt::methods
