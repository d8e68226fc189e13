// The building blocks of the CLIP towers (openai/CLIP clip/model.py). Internal:
// parameter names follow OpenAI's state-dict keys.
#pragma once
#include <torch/torch.h>

#include <vlmadapt/backbone/clip.h>

#include "fused_tower.h"

namespace vlmadapt::detail {

// The suffixes of prompts that share a prefix, packed without padding: packed row r is
// position slot[r] % length of suffix slot[r] / length. Rows after a suffix's end token
// cannot reach its feature (causal mask), so they are not computed at all.
struct SuffixRows {
  torch::Tensor slot;     // [R] int64, increasing
  torch::Tensor lengths;  // [count] int64, rows of each suffix
  int64_t length = 0;     // the longest suffix (the padded layout's row count per suffix)
};

// Pre-LN layer norm that computes in fp32 and casts back, as the reference does for fp16.
torch::Tensor layer_norm(torch::nn::LayerNorm& ln, const torch::Tensor& x);

// nn.MultiheadAttention's parameters (packed q,k,v) with a batch-first forward.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t width, int64_t heads);
  // x [N,L,D]; mask additive [L,L] or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask = {});
  // Causal attention over sequences that all begin with the same prefix: y_p [1,p,D] is
  // that prefix (computed once), y_s [R,D] the packed rest of each sequence (`rows`), mask
  // the causal [p+s,p+s] mask. Returns the prefix's output and the suffix outputs at the
  // padded slots `out_slot` (all of rows.slot, or fewer).
  std::pair<torch::Tensor, torch::Tensor> forward_prefixed(const torch::Tensor& y_p, const torch::Tensor& y_s,
                                                           const torch::Tensor& mask, const SuffixRows& rows,
                                                           const torch::Tensor& out_slot);

 private:
  friend class ResidualAttentionBlockImpl;
  int64_t heads_;
  torch::Tensor in_proj_weight_, in_proj_bias_;
  torch::nn::Linear out_proj_{nullptr};
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t width, Activation activation);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  friend class ResidualAttentionBlockImpl;
  Activation activation_;
  torch::nn::Linear c_fc_{nullptr}, c_proj_{nullptr};
};
TORCH_MODULE(Mlp);

class ResidualAttentionBlockImpl : public torch::nn::Module {
 public:
  ResidualAttentionBlockImpl(int64_t width, int64_t heads, const ClipConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask = {});
  // Pointers to the fp32 weights for fused_forward (valid while the module lives).
  FusedBlock fused_weights() const;
  // The block over a shared prefix [1,p,D] and packed suffix rows [R,D] (causal). With
  // `keep` (packed row indices), only those suffix rows go on and the prefix is not
  // finished (undefined): for the last block, whose other rows nothing reads.
  std::pair<torch::Tensor, torch::Tensor> forward_prefixed(const torch::Tensor& x_p, const torch::Tensor& x_s,
                                                           const torch::Tensor& mask, const SuffixRows& rows,
                                                           const torch::Tensor& keep);

 private:
  Attention attn_{nullptr};
  torch::nn::LayerNorm ln_1_{nullptr}, ln_2_{nullptr};
  Mlp mlp_{nullptr};
};
TORCH_MODULE(ResidualAttentionBlock);

// `resblocks.{i}`; batch-first [N,L,D].
class Transformer : public torch::nn::Module {
 public:
  Transformer(int64_t width, int64_t layers, int64_t heads, const ClipConfig& config);
  // Without autograd (no grad mode, or nothing requiring gradients) and in fp32 on the
  // CPU, the pass runs fused (fused_tower.h). first_token_only: the caller reads only
  // token 0 of the output, so the fused pass may leave the other rows of the last block
  // unfinished.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask = {}, bool first_token_only = false);
  // Causal sequences sharing their first p tokens: the prefix [1,p,D] runs once, not once
  // per sequence (under the causal mask it cannot see what follows it), and each packed
  // suffix row [R,D] attends to it. Returns the last block's output at each suffix's last
  // row (its end token), [count,D]. Without autograd it runs fused, like forward().
  torch::Tensor forward_prefixed(torch::Tensor x_p, torch::Tensor x_s, const torch::Tensor& mask,
                                 const SuffixRows& rows);
  size_t size() const { return blocks_.size(); }
  // Whether the fused pass can run on these inputs (rows of width features) and mask.
  bool can_fuse(std::initializer_list<torch::Tensor> inputs, const torch::Tensor& mask);

  std::vector<ResidualAttentionBlock> blocks_;
  FusedTower fused_;  // shape and activation, without blocks: their weights are taken per call
};

// `visual`: pixels [N,3,R,R] -> features [N,E].
class VisionTower : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& pixels) = 0;
};

std::shared_ptr<VisionTower> make_vision_transformer(const ClipConfig& config);
std::shared_ptr<VisionTower> make_modified_resnet(const ClipConfig& config);

}  // namespace vlmadapt::detail
