// maple: Multi-modal Prompt Learning (Khattak et al., CVPR 2023; muzairkhattak/
// multimodal-prompt-learning trainers/maple.py, clip/model.py). Learnable text tokens in the
// first J layers of the text tower, and image tokens in the same layers of the image tower
// that are Linear(512 -> 768) images of them, one Linear per layer (the text-to-vision
// coupling; specs/PROMPT_LEARNERS.md §3.1 and §3.4). Loss: CE. Both towers are the one shared
// CLIP with hooks (adapt/deep_prompts.h); nothing is copied.
// Defaults are the base-to-novel config's (vit_b16_c2_ep5_batch4_2ctx): n = 2 tokens from
// "a photo" (the prompt stays "a photo of a {class}."), J = 9; the recipe has SGD 0.0035,
// batch 4, 5 epochs. Where this differs from the code: fp32 throughout (the code casts the
// prompts to fp16 where they go in and keeps the layer-0 context in fp16); the widths are
// read from the model (the code hard-codes 512 and 768), so ViT-L/14 works as is; ResNet
// image towers are refused, as upstream.
#pragma once
#include <vlmadapt/adapt/deep_prompts.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

struct MapleOptions {
  DeepPromptOptions prompt{2, 2, 9, 9, "a photo of a", 0.02, /*couple=*/true,
                           {"maple.n_ctx", "maple.n_ctx", "maple.depth", "maple.depth"}};
  void bind(OptionSet& s) {
    s.add("n_ctx", prompt.n_text, "learnable tokens per layer in each tower").at_least(1);
    s.add("depth", prompt.depth_text, "prompt depth J: layer 0 and blocks 1..J-1 of both towers").at_least(1);
    s.add("ctx_init", prompt.ctx_init, "words whose first n_ctx tokens initialise the layer-0 text prompts");
    s.add("init_std", prompt.init_std, "std of the random initialisation of the deep prompts").at_least(0);
  }
};

class Maple : public Method {
 public:
  explicit Maple(const MapleOptions& options) : options_(options) {
    options_.prompt.n_image = options_.prompt.n_text;
    options_.prompt.depth_image = options_.prompt.depth_text;
  }

  Contract contract() const override { return {Input::Pixels, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (!learner_) learner_ = register_module("prompt_learner", DeepPromptLearner(clip_, task.tokenizer, options_.prompt));
    learner_->set_classes(task.classnames);
  }

  torch::Tensor logits(const Batch& batch) override {
    auto text = learner_->text_features();
    return cosine_logits(clip_, learner_->image_features(batch.pixels), text / text.norm(2, -1, true));
  }

  DeepPromptLearner& learner() { return learner_; }

 private:
  MapleOptions options_;
  Clip clip_{nullptr};
  DeepPromptLearner learner_{nullptr};
};

VLMADAPT_REGISTER_METHOD(Maple, MapleOptions, "maple",
                         "MaPLe: deep prompts in both towers, the image ones projected from the text ones")

}  // namespace vlmadapt::methods
