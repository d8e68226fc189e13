// The prompt that test-time methods tune per test image (TPT, RLCF's prompt variant):
// CoOp's prompt learner on the frozen text tower, initialised from words ("a photo of a",
// 4 context vectors) or from a finished CoOp run, and an AdamW. Episodic by default: the
// context and the optimizer state go back exactly to their initial values before every
// image. Continual: both carry on from image to image.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt {

struct TunedPromptOptions {
  PromptLearnerOptions prompt{4, "a photo of a", false, ClassPosition::End, 0.02};
  std::string init_run;        // a finished coop run folder: its ctx initialises the prompt
  double lr = 5e-3;
  double weight_decay = 0.01;  // AdamW's PyTorch default, as TPT
  int steps = 1;
  bool continual = false;
  int64_t text_chunk = 256;    // classes per text-tower pass (0 = all); bounds memory for 1000 classes
  // Adds n_ctx, ctx_init, init_run, lr, weight_decay, steps, continual, text_chunk.
  void bind(OptionSet& s);
};

class TunedPrompt {
 public:
  explicit TunedPrompt(TunedPromptOptions options) : options_(std::move(options)) {}
  // Builds the learner for the task's classes and registers it on `owner` as "prompt_learner".
  void setup(torch::nn::Module& owner, const TaskContext& task);
  // Before each image: episodic mode restores ctx and a fresh optimizer state.
  void begin_image();
  // The current context becomes the one every image starts from (after a loaded state).
  void restart_from_current();
  // Normalised text features [C,E] of the current context (with gradients to it).
  // Episodic mode starts every image from the same context, so the first step's features
  // and their graph are the same for every image: they are computed once and
  // backpropagated again for each image (exact).
  torch::Tensor classifier();
  // One optimizer step on `loss`.
  void step(const torch::Tensor& loss);
  const TunedPromptOptions& options() const { return options_; }

 private:
  TunedPromptOptions options_;
  PromptLearner learner_{nullptr};
  torch::Tensor initial_ctx_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  bool at_initial_ = false;           // ctx holds initial_ctx_ (episodic, before the first step)
  torch::Tensor initial_classifier_;  // classifier() at initial_ctx_, with its graph
};

// The context vectors of a finished CoOp run (<run>/method.safetensors, prompt_learner.ctx).
// Throws vlmadapt::Error naming the file when it is missing or holds no unified context.
torch::Tensor coop_context(const std::string& run_dir);

}  // namespace vlmadapt
