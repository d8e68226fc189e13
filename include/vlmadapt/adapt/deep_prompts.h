// Learnable tokens in every layer of both towers (IVLP, MaPLe, PromptSRC; VPT-deep when the
// text side has none), as specs/PROMPT_LEARNERS.md §3.1 gives them. The learner owns the
// tokens and hands them to the one shared CLIP as TowerHooks for the length of a pass:
// no tower is copied, the frozen weights are never touched.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/backbone/tokenizer.h>

namespace vlmadapt {

struct DeepPromptOptions {
  int64_t n_text = 2;       // learnable tokens per text layer (0 = the text side is fixed)
  int64_t n_image = 2;      // learnable tokens per image layer (0 = the image side is fixed)
  int64_t depth_text = 9;   // J_t: layer 0 (the token embeddings) and blocks 1..J_t-1
  int64_t depth_image = 9;  // J_v: after the positional embedding and blocks 1..J_v-1
  // The first n_text tokens of these words initialise layer 0's text prompts, which then
  // stand in the prompt in their place ("a photo of a {class}." with n_text = 2 learns
  // "a photo" and keeps "of a"); without it, or with fewer tokens than n_text: N(0, init_std²)
  // and "X" placeholders. Deep prompts and image prompts are always N(0, init_std²).
  std::string ctx_init = "a photo of a";
  double init_std = 0.02;
  // MaPLe: the image prompts are no parameters of their own but Linear(D -> W) images of the
  // text prompts, one Linear per layer (n_image = n_text, depth_image = depth_text).
  bool couple = false;
  // How a method's recipe names n_text, n_image, depth_text and depth_image, for errors.
  std::vector<std::string> keys{"n_text", "n_image", "depth_text", "depth_image"};
};

class DeepPromptLearnerImpl : public torch::nn::Module {
 public:
  // Throws vlmadapt::Error naming the option for a depth beyond the tower's layers, a token
  // count < 0, coupling with differing shapes, or image prompts on a ModifiedResNet tower.
  DeepPromptLearnerImpl(Clip clip, const Tokenizer& tokenizer, const DeepPromptOptions& options);

  // Tokenises "<prompt words> <class>." for a class set (keeps the learned tokens).
  void set_classes(const std::vector<std::string>& classnames);
  // The hooks for the current tokens (MaPLe's projections applied); with gradients to them.
  TowerHooks hooks();
  // Prompted text features [C,E] of the class set and image features [B,E] of pixels, not
  // normalised. Without autograd the text features are cached until a token changes.
  torch::Tensor text_features();
  torch::Tensor image_features(const torch::Tensor& pixels);

  const DeepPromptOptions& options() const { return options_; }

 private:
  Clip clip_;
  Tokenizer tokenizer_;
  DeepPromptOptions options_;
  std::string prompt_words_;  // what stands at positions 1..n_text: the init words or "X X ..."
  torch::Tensor ctx_;          // [n_t,D] layer-0 text prompts
  std::vector<torch::Tensor> text_deep_, image_deep_;  // [n,D] / [n,W] for layers 1..J-1
  torch::Tensor image_ctx_;    // [n_v,W] layer-0 image prompts (uncoupled)
  torch::nn::Linear proj_{nullptr};
  std::vector<torch::nn::Linear> projections_;  // coupled layers 1..J-1
  torch::Tensor tokens_;       // [C,L] token ids of the prompts
  torch::Tensor cached_text_;
  int64_t cached_version_ = -1;
};
TORCH_MODULE(DeepPromptLearner);

}  // namespace vlmadapt
