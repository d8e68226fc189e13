// coop: Context Optimization (Zhou et al., IJCV 2022; KaiyangZhou/CoOp trainers/coop.py).
// Learns M context vectors in front of (or around) the class name; the whole CLIP is
// frozen. Defaults are the paper's: 16 unified context vectors, class token at the end,
// random init with std 0.02. As in the official code, ctx_init sets n_ctx to its word
// count and ignores csc. Precision: fp32 on CPU (the official default is fp16 on GPU).
#pragma once
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

struct CoopOptions {
  PromptLearnerOptions prompt;
  int64_t text_chunk = 0;  // classes per text-tower pass; 0 = all (bounds memory for many classes)
  void bind(OptionSet& s) {
    s.add("n_ctx", prompt.n_ctx, "number of learnable context vectors (M)").at_least(1);
    s.add("ctx_init", prompt.ctx_init, "initialise from these words (e.g. 'a photo of a'); empty = random");
    s.add("csc", prompt.csc, "class-specific context (one set of vectors per class)");
    s.add("class_token_position", prompt.class_token_position, "where the class name goes");
    s.add("init_std", prompt.init_std, "std of the random initialisation").at_least(0);
    s.add("text_chunk", text_chunk, "classes per text-tower pass (0 = all at once)").at_least(0);
  }
};

class Coop : public Method {
 public:
  explicit Coop(const CoopOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Features, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (!learner_)
      learner_ = register_module("prompt_learner",
                                 PromptLearner(clip_, task.tokenizer, options_.prompt,
                                               static_cast<int64_t>(task.classnames.size())));
    learner_->chunk = options_.text_chunk;
    learner_->set_classes(task.classnames);
  }

  torch::Tensor logits(const Batch& batch) override {
    auto text = learner_->text_features();
    return cosine_logits(clip_, batch.image_features, text / text.norm(2, -1, true));
  }

  PromptLearner& learner() { return learner_; }

 private:
  CoopOptions options_;
  Clip clip_{nullptr};
  PromptLearner learner_{nullptr};
};

VLMADAPT_REGISTER_METHOD(Coop, CoopOptions, "coop", "CoOp: learnable context vectors for the class prompts")

}  // namespace vlmadapt::methods
