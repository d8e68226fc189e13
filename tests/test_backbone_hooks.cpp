// Hooks into the shared towers (clip.h TowerHooks): deep prompts and weight modifiers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <optional>

#include <vlmadapt/vlmadapt.h>

#include "test_util.h"

using namespace vlmadapt;
namespace vt = vlmadapt::testing;
using vt::error_of;

namespace {

TensorMap golden(const std::string& model) {
  return read_safetensors((vt::fixtures() / "clip" / model / "golden.safetensors").string());
}

// The image and text features of one pass (text through all three entries).
struct Features {
  torch::Tensor image, text, embedded, prefixed;
};

// The golden's first three prompts begin alike ("a photo of a ..."): the prefixed entry
// shares their first kPrefix tokens.
constexpr int64_t kPrefix = 4;

Features encode(Clip& clip, const TensorMap& g, bool inputs_need_grad = false) {
  auto pixels = g.at("pixels").clone().requires_grad_(inputs_need_grad);
  auto tokens = g.at("tokens").narrow(0, 0, 3);
  EXPECT_TRUE(torch::equal(tokens.narrow(1, 0, kPrefix), tokens.narrow(1, 0, kPrefix)[0].expand({3, kPrefix})));
  auto eot = tokens.argmax(-1);
  auto emb = clip->embed_tokens(tokens).detach().requires_grad_(inputs_need_grad);
  auto prefix = emb[0].narrow(0, 0, kPrefix);
  auto suffixes = emb.narrow(1, kPrefix, emb.size(1) - kPrefix);
  return {clip->encode_image(pixels), clip->encode_text(tokens), clip->encode_text_embeddings(emb, eot),
          clip->encode_text_prefixed(prefix, suffixes, eot)};
}

// Where a pass can run: with autograd (inputs needing gradients, module by module), no
// grad with the fused pass, no grad module by module.
enum class Mode { Grad, Fused, Modules };
const Mode kModes[] = {Mode::Grad, Mode::Fused, Mode::Modules};

Features encode_in(Mode mode, Clip& clip, const TensorMap& g) {
  std::optional<torch::NoGradGuard> no_grad;
  if (mode != Mode::Grad) no_grad.emplace();
  set_fused_inference(mode == Mode::Fused);
  auto out = encode(clip, g, mode == Mode::Grad);
  set_fused_inference(true);
  return out;
}

void expect_equal(const Features& a, const Features& b, const std::string& what) {
  EXPECT_TRUE(torch::equal(a.image, b.image)) << what << ": image";
  EXPECT_TRUE(torch::equal(a.text, b.text)) << what << ": text";
  EXPECT_TRUE(torch::equal(a.embedded, b.embedded)) << what << ": text embeddings";
  EXPECT_TRUE(torch::equal(a.prefixed, b.prefixed)) << what << ": prefixed text";
}

// As test_exact: the largest difference against the largest value.
double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

WeightModifier identity() {
  return [](const torch::Tensor& w) { return w; };
}

std::string block(bool visual, int b, const std::string& name) {
  return std::string(visual ? "visual." : "") + "transformer.resblocks." + std::to_string(b) + "." + name;
}

// N(0, 0.02^2) tokens that learn.
torch::Tensor learnable(int64_t n, int64_t width, uint64_t seed) {
  torch::manual_seed(seed);
  return (torch::randn({n, width}) * 0.02).requires_grad_(true);
}

DeepPrompts prompts(int64_t depth, int64_t n, int64_t width, uint64_t seed = 1) {
  DeepPrompts p;
  for (int64_t l = 0; l < depth; ++l) p.tokens.push_back(learnable(n, width, seed + l));
  return p;
}

}  // namespace

TEST(BackboneHooks, EmptyAndIdentityHooksAreBitIdentical) {
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  for (Mode mode : kModes) {
    const std::string where = "mode " + std::to_string(static_cast<int>(mode));
    const auto base = encode_in(mode, clip, g);
    clip->set_hooks(TowerHooks{});  // depth 0 everywhere, no modifiers
    expect_equal(encode_in(mode, clip, g), base, where + ", empty hooks");
    TowerHooks identities;
    for (bool visual : {true, false})
      for (const char* name : {"attn.in_proj_weight", "attn.out_proj.bias", "mlp.c_fc.weight", "ln_1.weight"})
        identities.modifiers[block(visual, 0, name)] = identity();
    clip->set_hooks(identities);
    expect_equal(encode_in(mode, clip, g), base, where + ", identity modifiers");
    clip->clear_hooks();
  }
}

TEST(BackboneHooks, DeepPromptsChangeFeaturesAndOnlyTheTokensLearn) {
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  const auto base = encode(clip, g);
  const auto& c = clip->config();
  TowerHooks hooks;
  hooks.text = prompts(c.transformer_layers, 2, c.transformer_width);
  hooks.image = prompts(c.vision_layers[0], 3, c.vision_width, 100);
  clip->set_hooks(hooks);
  const auto hooked = encode(clip, g);
  EXPECT_FALSE(torch::allclose(hooked.image, base.image));
  EXPECT_FALSE(torch::allclose(hooked.text, base.text));
  EXPECT_TRUE(hooked.image.requires_grad() && hooked.text.requires_grad());
  (hooked.image.sum() + hooked.text.sum()).backward();
  // Every layer's tokens reach the output (the class token, the end token attend to them).
  for (auto* p : {&hooks.text, &hooks.image})
    for (size_t l = 0; l < p->tokens.size(); ++l)
      EXPECT_GT(p->tokens[l].grad().abs().sum().item<double>(), 0) << "layer " << l;
  for (const auto& item : clip->named_parameters()) {
    EXPECT_FALSE(item.value().requires_grad()) << item.key();
    EXPECT_FALSE(item.value().grad().defined()) << item.key();
  }
  // Prompts of one tower leave the other alone.
  TowerHooks image_only;
  image_only.image = hooks.image;
  clip->set_hooks(image_only);
  EXPECT_TRUE(torch::equal(encode(clip, g).text, base.text));
}

TEST(BackboneHooks, DepthOneTextPromptIsTheInputEmbedding) {
  Clip clip = load_clip(vt::tiny_vit());
  torch::NoGradGuard no_grad;
  auto tokens = golden("tiny_vit").at("tokens").narrow(0, 0, 4);
  auto eot = tokens.argmax(-1);
  const int64_t n = 2;
  auto ctx = learnable(n, clip->text_width(), 7).detach();
  // By hand: the tokens as ordinary embeddings at positions 1..n.
  auto emb = clip->embed_tokens(tokens);
  emb.narrow(1, 1, n).copy_(ctx.unsqueeze(0).expand({emb.size(0), n, -1}));
  const auto expected = clip->encode_text_embeddings(emb, eot);
  TowerHooks hooks;
  hooks.text.tokens = {ctx};
  clip->set_hooks(hooks);
  EXPECT_TRUE(torch::equal(clip->encode_text(tokens), expected));
  EXPECT_TRUE(torch::equal(clip->encode_text_embeddings(clip->embed_tokens(tokens), eot), expected));
  // An undefined layer 0 leaves the input as given (the method's own context).
  hooks.text.tokens = {torch::Tensor()};
  clip->set_hooks(hooks);
  EXPECT_TRUE(torch::equal(clip->encode_text_embeddings(emb, eot), expected));
}

TEST(BackboneHooks, DeepLayersReplaceAndCarry) {
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  torch::NoGradGuard no_grad;
  const auto& c = clip->config();
  auto image = prompts(2, 3, c.vision_width, 3), text = prompts(2, 2, c.transformer_width, 5);
  auto features = [&](const DeepPrompts& img, const DeepPrompts& txt) {
    TowerHooks hooks;
    hooks.image = img;
    hooks.text = txt;
    clip->set_hooks(hooks);
    return encode(clip, g);
  };
  DeepPrompts image_1{{image.tokens[0]}}, text_1{{text.tokens[0]}};
  // All module by module, so that a difference is the prompts' and not the fused pass's.
  set_fused_inference(false);
  const auto depth_1 = features(image_1, text_1), depth_2 = features(image, text);
  // An undefined deeper layer carries the previous block's prompt rows: depth 1 again.
  image_1.tokens.push_back({});
  text_1.tokens.push_back({});
  expect_equal(features(image_1, text_1), depth_1, "undefined layer 1");
  // Layer 1's tokens replace those rows.
  EXPECT_FALSE(torch::allclose(depth_2.image, depth_1.image));
  EXPECT_FALSE(torch::allclose(depth_2.text, depth_1.text));
  set_fused_inference(true);
  // The prefixed entry agrees with the whole prompts: prompt rows inside the prefix
  // (n = 2 < p = 4) and reaching past it (n = 5), in the fused (no prompts past layer 0)
  // and the module path.
  for (int64_t n : {2, 5})
    for (int64_t depth : {int64_t{1}, c.transformer_layers}) {
      features({}, prompts(depth, n, c.transformer_width, 11));
      const auto f = encode(clip, g);
      EXPECT_LT(rel_diff(f.prefixed, f.embedded), 1e-5) << "n " << n << ", depth " << depth;
      EXPECT_TRUE(torch::equal(f.text, f.embedded));
    }
}

TEST(BackboneHooks, ZeroMaskEqualsZeroedWeight) {
  const auto g = golden("tiny_vit");
  const std::vector<std::string> names = {block(true, 0, "mlp.c_fc.weight"), block(false, 1, "attn.in_proj_weight"),
                                          block(true, 1, "attn.out_proj.bias")};
  Clip zeroed = load_clip(vt::tiny_vit());
  {
    torch::NoGradGuard no_grad;
    auto params = zeroed->named_parameters();
    for (const auto& name : names) params[name].zero_();
  }
  Clip clip = load_clip(vt::tiny_vit());
  TowerHooks hooks;
  std::vector<torch::Tensor> masks;
  for (const auto& name : names) {
    masks.push_back(torch::zeros(clip->named_parameters()[name].sizes()).requires_grad_(true));
    auto mask = masks.back();
    hooks.modifiers[name] = [mask](const torch::Tensor& w) { return w * mask; };
  }
  clip->set_hooks(hooks);
  for (Mode mode : kModes) {
    const auto expected = encode_in(mode, zeroed, g), got = encode_in(mode, clip, g);
    EXPECT_TRUE(torch::allclose(got.image, expected.image, 0, 0)) << static_cast<int>(mode);
    EXPECT_TRUE(torch::allclose(got.text, expected.text, 0, 0)) << static_cast<int>(mode);
    EXPECT_TRUE(torch::allclose(got.prefixed, expected.prefixed, 0, 0)) << static_cast<int>(mode);
  }
  // The masks learn (straight-through or not is the method's business).
  const auto f = encode(clip, g);
  (f.image.sum() + f.text.sum()).backward();
  for (size_t i = 0; i < masks.size(); ++i) EXPECT_GT(masks[i].grad().abs().sum().item<double>(), 0) << names[i];
}

TEST(BackboneHooks, LoraWithZeroBIsExactAndLearns) {
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  set_fused_inference(false);  // the LoRA pass needs autograd: compare module path to module path
  const auto base = encode(clip, g);
  set_fused_inference(true);
  const int64_t r = 2;
  struct Lora {
    torch::Tensor a, b;
  };
  std::vector<Lora> loras;
  TowerHooks hooks;
  for (bool visual : {true, false}) {
    auto w = clip->named_parameters()[block(visual, 0, "attn.in_proj_weight")];
    loras.push_back({torch::randn({r, w.size(1)}).requires_grad_(true), torch::zeros({w.size(0), r}).requires_grad_(true)});
    auto lora = loras.back();
    hooks.modifiers[block(visual, 0, "attn.in_proj_weight")] = [lora](const torch::Tensor& w) {
      return w + (1 / std::sqrt(2.0)) * torch::matmul(lora.b, lora.a);
    };
  }
  clip->set_hooks(hooks);
  const auto f = encode(clip, g);
  expect_equal(f, base, "LoRA with B = 0");
  (f.image.sum() + f.text.sum()).backward();
  for (const auto& lora : loras) EXPECT_GT(lora.b.grad().abs().sum().item<double>(), 0);
  for (const auto& p : clip->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(BackboneHooks, FrozenWeightsUnchanged) {
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  std::map<std::string, torch::Tensor> before;
  for (const auto& item : clip->named_parameters()) before[item.key()] = item.value().clone();
  const auto& c = clip->config();
  TowerHooks hooks;
  hooks.text = prompts(c.transformer_layers, 2, c.transformer_width);
  hooks.image = prompts(c.vision_layers[0], 2, c.vision_width);
  auto scale = torch::full({}, 0.5).requires_grad_(true);
  for (bool visual : {true, false})
    for (const char* name : {"attn.in_proj_weight", "mlp.c_proj.weight", "ln_2.bias"})
      hooks.modifiers[block(visual, 1, name)] = [scale](const torch::Tensor& w) { return w * scale + 0.01; };
  {
    HooksScope scope(*clip, hooks);
    const auto f = encode(clip, g);
    (f.image.sum() + f.text.sum() + f.prefixed.sum()).backward();
    torch::NoGradGuard no_grad;
    encode(clip, g);  // and the fused pass on the modified weights
  }
  EXPECT_TRUE(clip->hooks().empty());  // the scope put back what it found
  EXPECT_GT(scale.grad().abs().item<double>(), 0);
  for (const auto& item : clip->named_parameters())
    EXPECT_TRUE(torch::equal(item.value(), before.at(item.key()))) << item.key();
}

TEST(BackboneHooks, FusedPassRunsOnModifiedWeights) {
  // Without autograd a modified tower still runs fused; it matches the module path.
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  TowerHooks hooks;
  for (bool visual : {true, false})
    hooks.modifiers[block(visual, 0, "mlp.c_fc.weight")] = [](const torch::Tensor& w) { return w * 1.5; };
  clip->set_hooks(hooks);
  const auto fused = encode_in(Mode::Fused, clip, g), modules = encode_in(Mode::Modules, clip, g);
  EXPECT_TRUE(torch::allclose(fused.image, modules.image, 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(fused.text, modules.text, 1e-4, 1e-5));
  clip->clear_hooks();
  EXPECT_FALSE(torch::allclose(encode_in(Mode::Fused, clip, g).image, fused.image));
}

TEST(BackboneHooks, PatchEmbeddingTakesAModifier) {
  // A mask of ones on the ViT's conv1 is the stored pass bit for bit, in every mode; a
  // zero mask changes the image features and leaves the text alone.
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  for (Mode mode : kModes) {
    const std::string where = "mode " + std::to_string(static_cast<int>(mode));
    const auto base = encode_in(mode, clip, g);
    TowerHooks ones, zeros;
    ones.modifiers["visual.conv1.weight"] = [](const torch::Tensor& w) { return w * torch::ones_like(w); };
    zeros.modifiers["visual.conv1.weight"] = [](const torch::Tensor& w) { return w * 0; };
    clip->set_hooks(ones);
    expect_equal(encode_in(mode, clip, g), base, where + ", all-ones conv1 mask");
    clip->set_hooks(zeros);
    const auto zeroed = encode_in(mode, clip, g);
    EXPECT_FALSE(torch::allclose(zeroed.image, base.image)) << where;
    EXPECT_TRUE(torch::equal(zeroed.text, base.text)) << where;
    clip->clear_hooks();
    expect_equal(encode_in(mode, clip, g), base, where + ", cleared");
  }
  // Gradients reach what the modifier uses.
  auto scale = torch::ones({}).requires_grad_(true);
  TowerHooks scaled;
  scaled.modifiers["visual.conv1.weight"] = [scale](const torch::Tensor& w) { return w * scale; };
  clip->set_hooks(scaled);
  clip->encode_image(g.at("pixels")).sum().backward();
  clip->clear_hooks();
  ASSERT_TRUE(scale.grad().defined());
  EXPECT_NE(scale.grad().item<double>(), 0.0);
  // The ModifiedResNet's conv1 is its stem, not a patch embedding: it takes none.
  Clip rn = load_clip(vt::tiny_rn());
  TowerHooks stem;
  stem.modifiers["visual.conv1.weight"] = identity();
  const auto msg = error_of([&] { rn->set_hooks(stem); });
  EXPECT_NE(msg.find("'visual.conv1.weight' cannot take one"), std::string::npos) << msg;
}

TEST(BackboneHooks, ResNetTextHooksWork) {
  Clip clip = load_clip(vt::tiny_rn());
  const auto g = golden("tiny_rn");
  torch::NoGradGuard no_grad;
  const auto base = encode(clip, g);
  TowerHooks hooks;
  hooks.text = prompts(2, 2, clip->text_width());
  hooks.modifiers[block(false, 0, "mlp.c_fc.weight")] = identity();
  clip->set_hooks(hooks);
  const auto f = encode(clip, g);
  EXPECT_TRUE(torch::equal(f.image, base.image));
  EXPECT_FALSE(torch::allclose(f.text, base.text));
}

TEST(BackboneHooks, ClearErrors) {
  Clip vit = load_clip(vt::tiny_vit());
  const auto& c = vit->config();
  auto set = [&](Clip& clip, const TowerHooks& hooks) { return error_of([&] { clip->set_hooks(hooks); }); };
  TowerHooks good;
  good.modifiers[block(true, 0, "attn.in_proj_weight")] = identity();
  vit->set_hooks(good);

  TowerHooks typo;
  typo.modifiers[block(true, 0, "attn.in_proj_weights")] = identity();
  auto msg = set(vit, typo);
  EXPECT_NE(msg.find("no weight named 'visual.transformer.resblocks.0.attn.in_proj_weights'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("closest: visual.transformer.resblocks.0.attn.in_proj_weight"), std::string::npos) << msg;

  TowerHooks outside;
  outside.modifiers["visual.ln_pre.weight"] = identity();
  msg = set(vit, outside);
  EXPECT_NE(msg.find("'visual.ln_pre.weight' cannot take one"), std::string::npos) << msg;

  TowerHooks empty_fn;
  empty_fn.modifiers[block(false, 0, "mlp.c_fc.weight")] = WeightModifier();
  EXPECT_NE(set(vit, empty_fn).find("is empty"), std::string::npos);

  TowerHooks deep_text, deep_image;
  deep_text.text = prompts(c.transformer_layers + 1, 2, c.transformer_width);
  msg = set(vit, deep_text);
  EXPECT_NE(msg.find("depth " + std::to_string(c.transformer_layers + 1) + " exceeds the text tower's " +
                     std::to_string(c.transformer_layers) + " layers"),
            std::string::npos)
      << msg;
  deep_image.image = prompts(c.vision_layers[0] + 1, 2, c.vision_width);
  msg = set(vit, deep_image);
  EXPECT_NE(msg.find("depth " + std::to_string(c.vision_layers[0] + 1) + " exceeds the image tower's " +
                     std::to_string(c.vision_layers[0]) + " layers"),
            std::string::npos)
      << msg;

  TowerHooks wrong_width;
  wrong_width.image = prompts(1, 2, c.vision_width + 1);
  EXPECT_NE(set(vit, wrong_width).find("layer 0 has tokens"), std::string::npos);
  TowerHooks no_first;
  no_first.image.tokens = {torch::Tensor(), learnable(2, c.vision_width, 1)};
  EXPECT_NE(set(vit, no_first).find("layer 0's tokens are required"), std::string::npos);

  // A failed set_hooks leaves the hooks that were there.
  EXPECT_EQ(vit->hooks().modifiers.count(block(true, 0, "attn.in_proj_weight")), 1u);

  // A modifier that changes the shape, and prompts too long for a short prompt.
  TowerHooks reshaping;
  reshaping.modifiers[block(false, 0, "mlp.c_fc.weight")] = [](const torch::Tensor& w) { return w.t(); };
  vit->set_hooks(reshaping);
  auto tokens = golden("tiny_vit").at("tokens").narrow(0, 0, 2);
  msg = error_of([&] { vit->encode_text(tokens); });
  EXPECT_NE(msg.find("modifier of 'transformer.resblocks.0.mlp.c_fc.weight' returned"), std::string::npos) << msg;
  TowerHooks long_prompts;
  const int64_t first_end = tokens.argmax(-1).min().item<int64_t>();
  long_prompts.text = prompts(1, first_end, c.transformer_width);
  vit->set_hooks(long_prompts);
  msg = error_of([&] { vit->encode_text(tokens); });
  EXPECT_NE(msg.find("but a prompt ends at position " + std::to_string(first_end)), std::string::npos) << msg;

  // The ModifiedResNet takes no deep prompts.
  Clip rn = load_clip(vt::tiny_rn());
  TowerHooks rn_image;
  rn_image.image = prompts(1, 2, rn->config().vision_width);
  msg = set(rn, rn_image);
  EXPECT_NE(msg.find("deep image prompts need a ViT image tower; this CLIP's is a ModifiedResNet"), std::string::npos)
      << msg;
}

// A branch beside a linear map, x -> x ΔWᵀ, is the map with W + ΔW, in every entry of
// both towers (in_proj of a text block, c_fc of an image block, out_proj of both); a
// branch returning zeros changes nothing; bad names and shapes are refused.
TEST(BackboneHooks, ABranchBesideAMapIsTheUpdateOfItsWeight) {
  Clip clip = load_clip(vt::tiny_vit());
  const auto g = golden("tiny_vit");
  torch::manual_seed(3);
  TowerHooks merged, beside, zeros;
  for (const auto& name : {block(false, 1, "attn.in_proj_weight"), block(true, 0, "mlp.c_fc.weight"),
                           block(false, 0, "attn.out_proj.weight"), block(true, 1, "attn.out_proj.weight")}) {
    const auto w = clip->named_parameters()[name];
    const auto delta = torch::randn(w.sizes()) * 0.02;
    merged.modifiers[name] = [delta](const torch::Tensor& w) { return w + delta; };
    beside.branches[name] = [delta](const torch::Tensor& x) { return torch::linear(x, delta); };
    zeros.branches[name] = [out = w.size(0)](const torch::Tensor& x) {
      auto shape = x.sizes().vec();
      shape.back() = out;
      return torch::zeros(shape, x.options());
    };
  }
  clip->set_hooks(merged);
  const auto want = encode_in(Mode::Grad, clip, g);
  clip->set_hooks(beside);
  for (Mode mode : kModes) {  // a branch never runs fused: every mode takes the module path
    const auto got = encode_in(mode, clip, g);
    EXPECT_LT(rel_diff(got.image, want.image), 1e-5);
    EXPECT_LT(rel_diff(got.text, want.text), 1e-5);
    EXPECT_LT(rel_diff(got.prefixed, want.prefixed), 1e-5);
  }
  clip->clear_hooks();
  const auto base = encode_in(Mode::Grad, clip, g);
  EXPECT_GT(rel_diff(base.image, want.image), 1e-3);  // the update is not negligible
  clip->set_hooks(zeros);
  expect_equal(encode_in(Mode::Grad, clip, g), base, "zero branches");
  TowerHooks bad;
  bad.branches[block(false, 0, "ln_1.weight")] = [](const torch::Tensor& x) { return x; };
  EXPECT_NE(error_of([&] { clip->set_hooks(bad); }).find("'transformer.resblocks.0.ln_1.weight' is not the weight of "
                                                         "a block's linear map"),
            std::string::npos);
  TowerHooks wrong;
  wrong.branches[block(true, 0, "mlp.c_fc.weight")] = [](const torch::Tensor& x) { return x; };  // D, not 4D
  clip->set_hooks(wrong);
  EXPECT_NE(error_of([&] { encode(clip, g); }).find("expected the map's output shape"), std::string::npos);
  clip->clear_hooks();
}
