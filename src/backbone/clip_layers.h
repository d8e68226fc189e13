// The building blocks of the CLIP towers (openai/CLIP clip/model.py). Internal:
// parameter names follow OpenAI's state-dict keys.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

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
// The same with the weight and bias given (a pass's view of a block's layer norm).
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, double eps);

// A block's modifiers, by parameter name within the block ("attn.in_proj_weight").
using ModifierMap = std::map<std::string, WeightModifier>;
// A block's linear branches, by the map's weight name within the block ("mlp.c_fc.weight").
using BranchMap = std::map<std::string, LinearBranch>;

// What a tower's passes substitute: ClipImpl::set_hooks resolves its TowerHooks into one
// of these per Transformer (tower_hooks.cpp). Empty: the passes are exactly as without.
struct TransformerHooks {
  std::string prefix;                  // "visual.transformer.resblocks." (for errors)
  std::vector<ModifierMap> modifiers;  // one per block, or none at all
  std::vector<BranchMap> branches;     // the same
  std::vector<torch::Tensor> deep;     // DeepPrompts::tokens; deep[0] is the caller's (input)
  int64_t count = 0;                   // n, rows of each entry
  bool at_end = false;                 // image: the last n rows; text: rows 1..n
  bool has_deep() const;               // a defined entry for some block l >= 1
};

// One pass's view of a block's parameters: the stored tensors, or what modifiers made of
// them (computed once per pass, shared by every use in it).
struct BlockWeights {
  torch::Tensor ln_1_w, ln_1_b, in_w, in_b, out_w, out_b, ln_2_w, ln_2_b, fc_w, fc_b, proj_w, proj_b;
  double eps = 1e-5;
  // Branches beside the linear maps (TowerHooks::branches); empty where there is none.
  LinearBranch in_branch, out_branch, fc_branch, proj_branch;
  bool has_branch() const { return in_branch || out_branch || fc_branch || proj_branch; }
  // Pointers for fused_forward (valid while these tensors live; fp32 contiguous CPU).
  FusedBlock fused() const;
  std::vector<const torch::Tensor*> all() const;
};

// nn.MultiheadAttention's parameters (packed q,k,v) with a batch-first forward.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t width, int64_t heads);
  // x [N,L,D]; mask additive [L,L] or undefined; w: the pass's weights (in_w .. out_b).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const BlockWeights& w);
  // Causal attention over sequences that all begin with the same prefix: y_p [1,p,D] is
  // that prefix (computed once), y_s [R,D] the packed rest of each sequence (`rows`), mask
  // the causal [p+s,p+s] mask. Returns the prefix's output and the suffix outputs at the
  // padded slots `out_slot` (all of rows.slot, or fewer).
  std::pair<torch::Tensor, torch::Tensor> forward_prefixed(const torch::Tensor& y_p, const torch::Tensor& y_s,
                                                           const torch::Tensor& mask, const SuffixRows& rows,
                                                           const torch::Tensor& out_slot, const BlockWeights& w);

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
  torch::Tensor forward(const torch::Tensor& x, const BlockWeights& w);

 private:
  friend class ResidualAttentionBlockImpl;
  Activation activation_;
  torch::nn::Linear c_fc_{nullptr}, c_proj_{nullptr};
};
TORCH_MODULE(Mlp);

class ResidualAttentionBlockImpl : public torch::nn::Module {
 public:
  ResidualAttentionBlockImpl(int64_t width, int64_t heads, const ClipConfig& config);
  // The parameters as one pass uses them: what the modifier in `mods` (if any) makes of
  // each, else the stored tensor. prefix + index name the block in errors.
  // `branches` (if any) go beside the linear maps.
  BlockWeights weights(const ModifierMap* mods, const BranchMap* branches, const std::string& prefix,
                       size_t index) const;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const BlockWeights& w);
  // The block over a shared prefix [1,p,D] and packed suffix rows [R,D] (causal). With
  // `keep` (packed row indices), only those suffix rows go on and the prefix is not
  // finished (undefined): for the last block, whose other rows nothing reads.
  std::pair<torch::Tensor, torch::Tensor> forward_prefixed(const torch::Tensor& x_p, const torch::Tensor& x_s,
                                                           const torch::Tensor& mask, const SuffixRows& rows,
                                                           const torch::Tensor& keep, const BlockWeights& w);

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
  // CPU, the pass runs fused (fused_tower.h), on the modified weights where modifiers are
  // set; deep prompts take the module path. first_token_only: the caller reads only
  // token 0 of the output, so the fused pass may leave the other rows of the last block
  // unfinished.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask = {}, bool first_token_only = false);
  // Causal sequences sharing their first p tokens: the prefix [1,p,D] runs once, not once
  // per sequence (under the causal mask it cannot see what follows it), and each packed
  // suffix row [R,D] attends to it. Returns the last block's output at each suffix's last
  // row (its end token), [count,D]. Without autograd it runs fused, like forward(). Deep
  // prompts (rows 1..n) must lie in the prefix (n < p).
  torch::Tensor forward_prefixed(torch::Tensor x_p, torch::Tensor x_s, const torch::Tensor& mask,
                                 const SuffixRows& rows);
  size_t size() const { return blocks_.size(); }
  // Whether the fused pass can run on these inputs (rows of width features), mask and
  // weights (no deep prompts, nothing needing gradients, all fp32 contiguous on the CPU).
  bool can_fuse(std::initializer_list<torch::Tensor> inputs, const torch::Tensor& mask,
                const std::vector<BlockWeights>& weights) const;

  void set_hooks(TransformerHooks hooks) { hooks_ = std::move(hooks); }
  const TransformerHooks& hooks() const { return hooks_; }
  // x with the prompt rows replaced by hooks().deep[layer] (as is when that is undefined).
  torch::Tensor put_prompts(const torch::Tensor& x, size_t layer) const;

  std::vector<ResidualAttentionBlock> blocks_;
  FusedTower fused_;  // shape and activation, without blocks: their weights are taken per call

 private:
  std::vector<BlockWeights> pass_weights() const;
  FusedTower fused_tower(const std::vector<BlockWeights>& weights) const;
  TransformerHooks hooks_;
};

// `visual`: pixels [N,3,R,R] -> features [N,E].
class VisionTower : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& pixels) = 0;
  // The ViT's transformer (where its hooks live); null for the ModifiedResNet.
  virtual Transformer* transformer() { return nullptr; }
  // The ViT's modifier of its patch embedding conv1 (TowerHooks "visual.conv1.weight"),
  // set by ClipImpl::set_hooks; empty: the stored weight, through the module as always.
  WeightModifier patch_modifier;
};

std::shared_ptr<VisionTower> make_vision_transformer(const ClipConfig& config);
std::shared_ptr<VisionTower> make_modified_resnet(const ClipConfig& config);

}  // namespace vlmadapt::detail
