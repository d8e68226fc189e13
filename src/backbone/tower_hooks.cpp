// Hooks into the shared towers (clip.h TowerHooks): checking and installing them, and
// how a Transformer's pass applies them (modified block weights, deep prompt rows).
#include <algorithm>
#include <regex>
#include <set>

#include <vlmadapt/core/error.h>

#include "clip_layers.h"

namespace vlmadapt {

int64_t DeepPrompts::count() const {
  for (const auto& t : tokens)
    if (t.defined()) return t.dim() == 2 ? t.size(0) : 0;
  return 0;
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The few names nearest to `name`, for "did you mean" in errors.
std::string closest(const std::string& name, std::vector<std::string> names, size_t count = 5) {
  std::stable_sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    return edit_distance(name, a) < edit_distance(name, b);
  });
  std::string out;
  for (size_t i = 0; i < std::min(count, names.size()); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

// Shapes and depth of one tower's deep prompts; its n.
int64_t check_prompts(const DeepPrompts& prompts, const std::string& tower, int64_t width, int64_t layers) {
  if (prompts.depth() > layers)
    throw Error("deep " + tower + " prompts: depth " + std::to_string(prompts.depth()) + " exceeds the " + tower +
                " tower's " + std::to_string(layers) + " layers");
  const int64_t n = prompts.count();
  for (int64_t l = 0; l < prompts.depth(); ++l) {
    const auto& t = prompts.tokens[l];
    if (t.defined() && (t.dim() != 2 || t.size(0) != n || n == 0 || t.size(1) != width))
      throw Error("deep " + tower + " prompts: layer " + std::to_string(l) + " has tokens " + c10::str(t.sizes()) +
                  ", expected [n," + std::to_string(width) + "] with the same n >= 1 at every layer");
  }
  return n;
}

// Per-block hooks of both towers (modifiers or branches), filled by block name.
template <class Map>
struct BlockHooks {
  std::vector<Map> text, image;
  size_t text_blocks = 0, image_blocks = 0;
  // `m`: a name matched by in_block ([visual.]transformer.resblocks.{i}.{name in the block}).
  void put(const std::smatch& m, typename Map::mapped_type hook) {
    auto& tower = m[1].matched ? image : text;
    if (tower.empty()) tower.resize(m[1].matched ? image_blocks : text_blocks);
    tower.at(std::stoul(m[2].str()))[m[3].str()] = std::move(hook);
  }
};

}  // namespace

void ClipImpl::set_hooks(TowerHooks hooks) {
  detail::Transformer* vit = visual_->transformer();
  const int64_t text_n = check_prompts(hooks.text, "text", config_.transformer_width, config_.transformer_layers);
  // The end token must still follow the prompt positions 1..n.
  if (text_n + 2 > config_.context_length)
    throw Error("deep text prompts: " + std::to_string(text_n) + " tokens leave no room in a context of " +
                std::to_string(config_.context_length));
  int64_t image_n = 0;
  if (hooks.image.depth() > 0) {
    if (!vit)
      throw Error("deep image prompts need a ViT image tower; this CLIP's is a ModifiedResNet (" +
                  config_.describe() + ")");
    image_n = check_prompts(hooks.image, "image", config_.vision_width, config_.vision_layers.at(0));
    if (!hooks.image.tokens[0].defined())
      throw Error("deep image prompts: layer 0's tokens are required (they are appended to the input sequence)");
  }
  // Modifiers by tower and block: "[visual.]transformer.resblocks.{i}.{name in the block}".
  BlockHooks<detail::ModifierMap> mods{{}, {}, transformer_->size(), vit ? vit->size() : 0};
  BlockHooks<detail::BranchMap> branches{{}, {}, mods.text_blocks, mods.image_blocks};
  std::vector<std::string> names;
  for (const auto& item : named_parameters(true)) names.push_back(item.key());
  static const std::regex in_block(R"(^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$)");
  static const std::string patch_embedding = "visual.conv1.weight";
  WeightModifier patch_modifier;
  for (const auto& [name, modifier] : hooks.modifiers) {
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw Error("weight modifier: no weight named '" + name + "'; closest: " + closest(name, names));
    std::smatch m;
    const bool patches = vit && name == patch_embedding;  // the ModifiedResNet's conv1 is its stem
    if (!patches && !std::regex_match(name, m, in_block))
      throw Error("weight modifier: '" + name + "' cannot take one; only the parameters of the transformer " +
                  "blocks can (e.g. transformer.resblocks.0.attn.in_proj_weight, " +
                  "visual.transformer.resblocks.0.mlp.c_fc.weight) and a ViT's patch embedding " + patch_embedding);
    if (!modifier) throw Error("weight modifier for '" + name + "' is empty");
    if (patches) {
      patch_modifier = modifier;
      continue;
    }
    mods.put(m, modifier);
  }
  // Branches by tower and block: only beside the blocks' four linear maps.
  static const std::set<std::string> linear_maps = {"attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight",
                                                    "mlp.c_proj.weight"};
  for (const auto& [name, branch] : hooks.branches) {
    std::smatch m;
    if (std::find(names.begin(), names.end(), name) == names.end() || !std::regex_match(name, m, in_block) ||
        !linear_maps.count(m[3].str()))
      throw Error("linear branch: '" + name + "' is not the weight of a block's linear map (expected " +
                  "[visual.]transformer.resblocks.{i}.{attn.in_proj_weight, attn.out_proj.weight, mlp.c_fc.weight, " +
                  "mlp.c_proj.weight}); closest: " + closest(name, names));
    if (!branch) throw Error("linear branch for '" + name + "' is empty");
    branches.put(m, branch);
  }
  // Everything checked: install (nothing changed if anything above threw).
  transformer_->set_hooks(
      {"transformer.resblocks.", std::move(mods.text), std::move(branches.text), hooks.text.tokens, text_n, false});
  if (vit)
    vit->set_hooks({"visual.transformer.resblocks.", std::move(mods.image), std::move(branches.image),
                    hooks.image.tokens, image_n, true});
  visual_->patch_modifier = std::move(patch_modifier);
  hooks_ = std::move(hooks);
}

torch::Tensor ClipImpl::with_text_prompts(const torch::Tensor& embeddings, const torch::Tensor& eot) const {
  const int64_t n = hooks_.text.count();
  if (hooks_.text.depth() == 0 || n == 0) return embeddings;
  const int64_t first_end = eot.min().item<int64_t>();
  if (first_end <= n)
    throw Error("deep text prompts fill positions 1.." + std::to_string(n) + " but a prompt ends at position " +
                std::to_string(first_end) + " (give each prompt " + std::to_string(n) +
                " placeholder words after the start token)");
  const auto& first = hooks_.text.tokens[0];
  if (!first.defined()) return embeddings;  // the caller's own context is the layer-0 prompt
  auto tokens = first.to(embeddings.scalar_type()).unsqueeze(0).expand({embeddings.size(0), n, -1});
  return torch::cat({embeddings.narrow(1, 0, 1), tokens, embeddings.narrow(1, 1 + n, embeddings.size(1) - 1 - n)}, 1);
}

HooksScope::HooksScope(ClipImpl& clip, TowerHooks hooks) : clip_(clip), saved_(clip.hooks()) {
  clip_.set_hooks(std::move(hooks));
}

HooksScope::~HooksScope() {
  try {
    clip_.set_hooks(std::move(saved_));  // were valid when set, so this does not throw
  } catch (...) {
    clip_.clear_hooks();
  }
}

}  // namespace vlmadapt

namespace vlmadapt::detail {

bool TransformerHooks::has_deep() const {
  for (size_t l = 1; l < deep.size(); ++l)
    if (deep[l].defined()) return true;
  return false;
}

BlockWeights ResidualAttentionBlockImpl::weights(const ModifierMap* mods, const BranchMap* branches,
                                                 const std::string& prefix, size_t index) const {
  auto pick = [&](const char* name, const torch::Tensor& stored) {
    if (!mods) return stored;
    auto it = mods->find(name);
    if (it == mods->end()) return stored;
    auto modified = it->second(stored);
    if (!modified.defined() || modified.sizes() != stored.sizes())
      throw Error("weight modifier of '" + prefix + std::to_string(index) + "." + name + "' returned " +
                  (modified.defined() ? c10::str(modified.sizes()) : std::string("an undefined tensor")) +
                  ", expected the weight's shape " + c10::str(stored.sizes()));
    return modified;
  };
  auto beside = [&](const char* name) {
    if (!branches) return LinearBranch();
    auto it = branches->find(name);
    return it == branches->end() ? LinearBranch() : it->second;
  };
  BlockWeights w{pick("ln_1.weight", ln_1_->weight),
          pick("ln_1.bias", ln_1_->bias),
          pick("attn.in_proj_weight", attn_->in_proj_weight_),
          pick("attn.in_proj_bias", attn_->in_proj_bias_),
          pick("attn.out_proj.weight", attn_->out_proj_->weight),
          pick("attn.out_proj.bias", attn_->out_proj_->bias),
          pick("ln_2.weight", ln_2_->weight),
          pick("ln_2.bias", ln_2_->bias),
          pick("mlp.c_fc.weight", mlp_->c_fc_->weight),
          pick("mlp.c_fc.bias", mlp_->c_fc_->bias),
          pick("mlp.c_proj.weight", mlp_->c_proj_->weight),
          pick("mlp.c_proj.bias", mlp_->c_proj_->bias),
          ln_1_->options.eps()};
  w.in_branch = beside("attn.in_proj_weight");
  w.out_branch = beside("attn.out_proj.weight");
  w.fc_branch = beside("mlp.c_fc.weight");
  w.proj_branch = beside("mlp.c_proj.weight");
  return w;
}

std::vector<BlockWeights> Transformer::pass_weights() const {
  std::vector<BlockWeights> out;
  out.reserve(blocks_.size());
  for (size_t b = 0; b < blocks_.size(); ++b) {
    const ModifierMap* mods = hooks_.modifiers.empty() ? nullptr : &hooks_.modifiers[b];
    const BranchMap* branches = hooks_.branches.empty() ? nullptr : &hooks_.branches[b];
    out.push_back(blocks_[b]->weights(mods, branches, hooks_.prefix, b));
  }
  return out;
}

torch::Tensor Transformer::put_prompts(const torch::Tensor& x, size_t layer) const {
  if (layer >= hooks_.deep.size() || !hooks_.deep[layer].defined()) return x;
  const int64_t n = hooks_.count, len = x.size(1), start = hooks_.at_end ? len - n : 1;
  auto tokens = hooks_.deep[layer].to(x.scalar_type()).unsqueeze(0).expand({x.size(0), n, x.size(2)});
  // A new tensor, not an in-place write: autograd keeps the previous block's output intact.
  return torch::cat({x.narrow(1, 0, start), tokens, x.narrow(1, start + n, len - start - n)}, 1);
}

}  // namespace vlmadapt::detail
