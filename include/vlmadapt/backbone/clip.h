// The frozen CLIP backbone: ViT or ModifiedResNet image tower and the causal
// text transformer, with parameter names equal to OpenAI's state-dict keys so a
// checkpoint of any supported format loads by name (see checkpoint.h).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {

namespace detail {
class VisionTower;
class Transformer;
}  // namespace detail

enum class Activation { QuickGELU, GELU };

// The architecture, read off the weights' shapes as openai/CLIP build_model does.
struct ClipConfig {
  int64_t embed_dim = 512;
  int64_t image_resolution = 224;
  bool vision_vit = true;
  std::vector<int64_t> vision_layers{12};  // ViT: {layers}; ResNet: 4 block counts
  int64_t vision_width = 768;
  int64_t vision_patch_size = 16;          // ViT only
  int64_t vision_heads = 12;
  int64_t context_length = 77;
  int64_t vocab_size = 49408;
  int64_t transformer_width = 512;
  int64_t transformer_heads = 8;
  int64_t transformer_layers = 12;
  Activation activation = Activation::QuickGELU;  // OpenAI weights use QuickGELU
  double layer_norm_eps = 1e-5;

  // "ViT-B/16"-like summary: "ViT (12 layers, width 768, patch 16, 224px)".
  std::string describe() const;
  // Every value, for error messages: "text width 512, heads 8, layers 12; vision ...".
  std::string describe_values() const;
  // The released architectures by name (ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336, RN50, RN101,
  // RN50x4, RN50x16, RN50x64). Throws vlmadapt::Error listing them for an unknown name.
  static ClipConfig named(const std::string& name);
  static std::vector<std::string> names();
};

// Reads the architecture from an OpenAI-keyed state dict. `where` names the file in errors.
// Throws vlmadapt::Error naming `where` for a value no CLIP can have (so modules are never
// built from it): heads > 0 dividing the width, layers > 0, a patch size dividing the
// resolution, and upper bounds (width 16384, 1024 layers, 8192 px) far above released models.
ClipConfig infer_clip_config(const TensorMap& state_dict, const std::string& where);
void validate_clip_config(const ClipConfig& config, const std::string& where);

// ---- hooks into the shared towers ------------------------------------------
// Methods that reach inside the frozen towers (deep prompts: VPT-deep, IVLP, MaPLe,
// PromptSRC; weight masks: R-AMT; low-rank updates: CLIP-LoRA) set hooks on the one CLIP
// instead of copying a tower. The stored weights are never written or copied: a hook
// substitutes tensors in the forward pass, so gradients reach the hook's own tensors.

// Learnable tokens of one tower, layer by layer, as the official code inserts them
// (specs/PROMPT_LEARNERS.md §3.1). tokens[l] [n,width] belongs to layer l, depth =
// tokens.size() (at most the tower's layers); every defined entry has the same n. Tokens
// are cast to the hidden state's dtype where they go in. Depth 0: the tower as without hooks.
//  Text:  the prompt positions 1..n, right after the start token (the prompt carries n
//         placeholder words there, "X X X X ...", so the end token's position is right).
//         tokens[0] replaces their embeddings (the positional embedding is then added as to
//         any word); undefined leaves the input as given (a method that puts its own
//         context into the embeddings, e.g. CoOp's prefix). tokens[l], 1 <= l < depth,
//         overwrites hidden rows 1..n before block l (undefined: carried along).
//  Image (ViT only; ModifiedResNet throws): tokens[0] (required) is appended after the
//         class token and the patches, after the positional embedding (it gets none) and
//         before ln_pre; tokens[l] replaces the last n hidden rows before block l. Blocks
//         from depth on carry the prompt rows along; the output reads the class token.
struct DeepPrompts {
  std::vector<torch::Tensor> tokens;
  int64_t depth() const { return static_cast<int64_t>(tokens.size()); }
  int64_t count() const;  // n: rows of the defined entries (0 when none)
};

// W' = f(W) for one weight in the forward pass, e.g. a mask W * m or a low-rank update
// W + s * B.mm(A). It must return W's shape and must not write into W (W is the frozen
// parameter itself). Called once per tower pass; gradients flow to whatever f uses.
using WeightModifier = std::function<torch::Tensor(const torch::Tensor& weight)>;

// y = x W^T + b + g(x) for one of a block's linear maps: g sees the map's input x
// [..., d_in] and returns [..., d_out]. For what no change of W can express, such as a
// LoRA branch with dropout on its own input, s * B(A(dropout(x))). Called at every use of
// the map in a pass; a pass with a branch does not run fused.
using LinearBranch = std::function<torch::Tensor(const torch::Tensor& input)>;

struct TowerHooks {
  DeepPrompts text;   // transformer_width tokens
  DeepPrompts image;  // vision_width tokens
  // By OpenAI state-dict name. Any parameter of a transformer block of either tower can
  // take one: "transformer.resblocks.{i}.{attn.in_proj_weight, attn.in_proj_bias,
  // attn.out_proj.weight, mlp.c_fc.weight, mlp.c_proj.bias, ln_1.weight, ...}" and the same
  // under "visual.transformer.resblocks.{i}." (ViT). q/k/v slices of in_proj_weight are the
  // modifier's business (rows [0,D), [D,2D), [2D,3D)). Outside the blocks, only the ViT's
  // patch embedding "visual.conv1.weight" [W,3,p,p] can take one (R-AMT masks it); the
  // ModifiedResNet's stem conv1 cannot.
  std::map<std::string, WeightModifier> modifiers;
  // By the map's weight name, for the four linear maps of a transformer block:
  // "[visual.]transformer.resblocks.{i}.{attn.in_proj_weight, attn.out_proj.weight,
  // mlp.c_fc.weight, mlp.c_proj.weight}" (in_proj's output is q, k, v: [..., 3D]).
  std::map<std::string, LinearBranch> branches;

  bool empty() const {
    return text.depth() == 0 && image.depth() == 0 && modifiers.empty() && branches.empty();
  }
};

class ClipImpl : public torch::nn::Module {
 public:
  explicit ClipImpl(const ClipConfig& config);

  // float [N,3,R,R] -> [N,E] (not normalised).
  torch::Tensor encode_image(const torch::Tensor& pixels);
  // int32/int64 [N,L] token ids -> [N,E] (not normalised), pooled at the end token (argmax id).
  torch::Tensor encode_text(const torch::Tensor& tokens);
  // The prompt-learning entry: token embeddings [N,L,D] (before the positional embedding)
  // and end-token positions [N]. Positions after the last end token cannot change any
  // feature under the causal mask, so the sequence is cut there.
  torch::Tensor encode_text_embeddings(const torch::Tensor& embeddings, const torch::Tensor& eot);
  // The same for prompts that all begin with one prefix: prefix [p,D] (e.g. the start token
  // and CoOp's shared context), suffixes [N,s,D] (class tokens, end token, ...), end-token
  // positions [N] counted from the prefix's start (each at least p). Under the causal mask
  // the prefix cannot see its suffixes, so it runs once instead of once per prompt: the
  // same features and gradients as encode_text_embeddings on the concatenated prompts.
  // Deep text prompts in the prefix (positions 1..n, n < p) are shared by all prompts
  // like the prefix itself; when they reach past it, the prompts run whole through
  // encode_text_embeddings.
  torch::Tensor encode_text_prefixed(const torch::Tensor& prefix, const torch::Tensor& suffixes,
                                     const torch::Tensor& eot);

  // Hooks for every later pass of either tower (encode_image, visual()->forward, the three
  // text entries), until replaced or cleared. Checked here: throws vlmadapt::Error for an
  // unknown or unhookable weight name (listing close names), a depth beyond the tower's
  // layers, token shapes, or deep image prompts on a ModifiedResNet. Without hooks (or
  // with empty ones) every pass is exactly today's. Frozen passes (no autograd, fp32, CPU)
  // with modifiers alone still run fused, on the modified weights; deep prompts and passes
  // that need gradients go module by module. Not to be called while a pass runs.
  void set_hooks(TowerHooks hooks);
  void clear_hooks() { set_hooks({}); }
  const TowerHooks& hooks() const { return hooks_; }

  // Token ids -> embeddings [N,L,D].
  torch::Tensor embed_tokens(const torch::Tensor& tokens);
  // exp(logit_scale) * normalise(image) @ normalise(text)^T.
  torch::Tensor logits(const torch::Tensor& image_features, const torch::Tensor& text_features);

  torch::Tensor logit_scale() const;  // 0-d, log scale as stored
  int64_t image_resolution() const { return config_.image_resolution; }
  int64_t embed_dim() const { return config_.embed_dim; }
  int64_t text_width() const { return config_.transformer_width; }
  const ClipConfig& config() const { return config_; }
  int64_t parameter_count() const;

  // The backbone always runs in inference mode (BatchNorm keeps its running statistics);
  // freezing is separate: parameters have requires_grad false unless a method enables them.
  void train(bool on = true) override;

  // The image tower as a module (for methods that tune or mask it).
  std::shared_ptr<torch::nn::Module> visual() const;

  // Copies an OpenAI-keyed state dict in, checking every key and shape (strict).
  // Throws vlmadapt::Error naming `where`, the key and the shapes on a mismatch.
  void load_weights(const TensorMap& state_dict, const std::string& where);
  TensorMap weights() const;  // OpenAI-keyed, as stored (for saving)

 private:
  ClipConfig config_;
  std::shared_ptr<detail::VisionTower> visual_;
  std::shared_ptr<detail::Transformer> transformer_;
  torch::Tensor token_embedding_, positional_embedding_, text_projection_, logit_scale_;
  torch::nn::LayerNorm ln_final_{nullptr};
  TowerHooks hooks_;

  torch::Tensor with_text_prompts(const torch::Tensor& embeddings, const torch::Tensor& eot) const;
};
TORCH_MODULE(Clip);

// Sets hooks for its lifetime, then puts back the ones it found.
class HooksScope {
 public:
  HooksScope(ClipImpl& clip, TowerHooks hooks);
  ~HooksScope();
  HooksScope(const HooksScope&) = delete;
  HooksScope& operator=(const HooksScope&) = delete;

 private:
  ClipImpl& clip_;
  TowerHooks saved_;
};

// Frozen passes (no autograd, fp32, CPU) of the transformer towers run fused, sequence
// group by sequence group (src/fused_tower.h); the same algebra as the module-by-module
// pass within fp32 rounding. Off: every pass goes module by module (for comparisons).
void set_fused_inference(bool enabled);
bool fused_inference();

}  // namespace vlmadapt
