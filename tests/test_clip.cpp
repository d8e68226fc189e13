// The CLIP towers and loaders against the reference's goldens, in every format.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <vlmadapt/vlmadapt.h>

#include "backbone/fused_tower.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace vlmadapt;
namespace vt = vlmadapt::testing;

namespace {

struct Case {
  std::string model;
  std::string file;
  CheckpointFormat format;
  // The open_clip fixture files store every tensor in fp16, layer norms and
  // logit_scale included, while the reference keeps those in fp32: they hold
  // less information than the goldens were made from (see FixturePrecision).
  bool all_fp16 = false;
};

std::vector<Case> cases() {
  return {{"tiny_vit", "model_openai.pt", CheckpointFormat::OpenAITorchScript},
          {"tiny_vit", "model_openclip.safetensors", CheckpointFormat::OpenClipSafetensors, true},
          {"tiny_vit", "model_hf.safetensors", CheckpointFormat::HuggingFace},
          {"tiny_rn", "model_openai.pt", CheckpointFormat::OpenAITorchScript},
          {"tiny_rn", "model_openclip.safetensors", CheckpointFormat::OpenClipSafetensors, true},
          {"tiny_rn", "model_openclip.bin", CheckpointFormat::OpenClipPickle, true}};
}

fs::path model_dir(const std::string& m) { return vt::fixtures() / "clip" / m; }

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

class GoldenTest : public ::testing::TestWithParam<Case> {};

TEST_P(GoldenTest, FeaturesAndLogitsMatchReference) {
  const Case& c = GetParam();
  const auto path = (model_dir(c.model) / c.file).string();
  Checkpoint ck = read_checkpoint(path);
  EXPECT_EQ(ck.format, c.format);
  Clip clip = load_clip(path);
  auto golden = read_safetensors((model_dir(c.model) / "golden.safetensors").string());
  torch::NoGradGuard no_grad;
  auto img = clip->encode_image(golden.at("pixels"));
  auto txt = clip->encode_text(golden.at("tokens"));
  auto logits = clip->logits(img, txt);
  if (c.all_fp16) {
    // Exact loader check: the same features as the reference weights rounded to fp16 ...
    auto sd = read_checkpoint((model_dir(c.model) / "model_openai.pt").string()).state_dict;
    for (auto& [k, v] : sd) v = v.is_floating_point() ? v.to(torch::kHalf).to(torch::kFloat) : v;
    Clip rounded(ck.config);
    rounded->load_weights(sd, "rounded reference");
    EXPECT_LT(max_abs(img, rounded->encode_image(golden.at("pixels"))), 1e-5) << path;
    EXPECT_LT(max_abs(txt, rounded->encode_text(golden.at("tokens"))), 1e-5) << path;
    // ... and within fp16 rounding of the goldens.
    EXPECT_LT(max_abs(img, golden.at("image_features")), 5e-3) << path;
    EXPECT_LT(max_abs(txt, golden.at("text_features")), 5e-3) << path;
    EXPECT_LT(max_abs(logits, golden.at("logits_per_image")), 5e-2) << path;
  } else {
    EXPECT_LT(max_abs(img, golden.at("image_features")), 1e-4) << path;
    EXPECT_LT(max_abs(txt, golden.at("text_features")), 1e-4) << path;
    EXPECT_LT(max_abs(logits, golden.at("logits_per_image")), 1e-4) << path;
  }
  EXPECT_EQ(clip->logit_scale().dim(), 0);
  EXPECT_EQ(clip->encode_text(golden.at("tokens").to(torch::kInt)).sizes(), txt.sizes());
}

INSTANTIATE_TEST_SUITE_P(AllFormats, GoldenTest, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string name = info.param.model + "_" + info.param.file;
  for (auto& ch : name)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
});

TEST(Clip, FixturePrecision) {
  // Why the open_clip files are checked against rounded weights: their layer norms
  // are fp16 while the reference's are fp32.
  auto oc = read_safetensors((model_dir("tiny_vit") / "model_openclip.safetensors").string());
  auto ref = read_checkpoint((model_dir("tiny_vit") / "model_openai.pt").string()).state_dict;
  EXPECT_EQ(oc.at("ln_final.weight").scalar_type(), torch::kHalf);
  EXPECT_EQ(ref.at("ln_final.weight").scalar_type(), torch::kFloat);
  EXPECT_FALSE(torch::equal(oc.at("ln_final.weight").to(torch::kFloat), ref.at("ln_final.weight")));
  EXPECT_TRUE(torch::equal(oc.at("ln_final.weight"), ref.at("ln_final.weight").to(torch::kHalf)));
}

TEST(Clip, ArchitectureReadOffShapes) {
  auto vit = read_checkpoint((model_dir("tiny_vit") / "model_openclip.safetensors").string()).config;
  EXPECT_TRUE(vit.vision_vit);
  EXPECT_EQ(vit.image_resolution, 32);
  EXPECT_EQ(vit.vision_patch_size, 8);
  EXPECT_EQ(vit.vision_layers, std::vector<int64_t>{2});
  EXPECT_EQ(vit.embed_dim, 64);
  EXPECT_EQ(vit.transformer_heads, 2);
  auto rn = read_checkpoint((model_dir("tiny_rn") / "model_openai.pt").string()).config;
  EXPECT_FALSE(rn.vision_vit);
  EXPECT_EQ(rn.vision_layers, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(rn.image_resolution, 64);
  EXPECT_EQ(rn.vision_heads, 8);
}

TEST(Clip, HfFolderLoads) {
  auto dir = vt::temp_dir("hf_folder");
  fs::copy_file(model_dir("tiny_vit") / "model_hf.safetensors", dir / "model.safetensors");
  fs::copy_file(model_dir("tiny_vit") / "model_hf.config.json", dir / "config.json");
  Clip clip = load_clip(dir.string());
  EXPECT_EQ(clip->image_resolution(), 32);
  fs::remove_all(dir);
}

TEST(Clip, TextCutAfterLastEndTokenIsExact) {
  Clip clip = load_clip((model_dir("tiny_vit") / "model_openclip.safetensors").string());
  auto golden = read_safetensors((model_dir("tiny_vit") / "golden.safetensors").string());
  torch::NoGradGuard no_grad;
  auto tokens = golden.at("tokens").narrow(0, 0, 4);  // short prompts
  auto eot = tokens.argmax(-1);
  auto emb = clip->embed_tokens(tokens);
  const int64_t last = eot.max().item<int64_t>() + 1;
  auto full = clip->encode_text_embeddings(emb, eot);
  auto cut = clip->encode_text_embeddings(emb.narrow(1, 0, last).contiguous(), eot);
  EXPECT_TRUE(torch::equal(full, cut));
  // Garbage after the end token changes nothing either: the causal mask hides it.
  auto noisy = emb.clone();
  noisy.narrow(1, last, 77 - last).normal_();
  EXPECT_TRUE(torch::allclose(clip->encode_text_embeddings(noisy, eot), full, 0, 1e-6));
  // And the embedding entry equals encode_text.
  EXPECT_LT(max_abs(full, clip->encode_text(tokens)), 1e-6);
}

TEST(Clip, SaveLoadRoundTrip) {
  Clip clip = load_clip((model_dir("tiny_rn") / "model_openai.pt").string());
  auto dir = vt::temp_dir("save_clip");
  const auto out = (dir / "m.safetensors").string();
  save_clip(clip, out);
  Clip again = load_clip(out);
  auto golden = read_safetensors((model_dir("tiny_rn") / "golden.safetensors").string());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(clip->encode_image(golden.at("pixels")), again->encode_image(golden.at("pixels"))));
  fs::remove_all(dir);
}

TEST(Clip, FrozenByDefault) {
  Clip clip = load_clip((model_dir("tiny_vit") / "model_openclip.safetensors").string());
  for (const auto& p : clip->parameters()) EXPECT_FALSE(p.requires_grad());
  clip->train();
  EXPECT_FALSE(clip->is_training());
}

TEST(Clip, RandomNamedArchitectures) {
  EXPECT_THROW(ClipConfig::named("ViT-X/99"), Error);
  Clip c = random_clip("RN50");
  EXPECT_EQ(c->image_resolution(), 224);
  EXPECT_EQ(ClipConfig::named("ViT-B/16").vision_patch_size, 16);
}

// ---- the fused inference path (src/fused_tower.h) -------------------------

// A small random CLIP whose every weight, norms included, is random: the fused pass must
// follow the module-by-module pass for any weights, not only for near-identity norms.
Clip random_small_clip(Activation activation) {
  ClipConfig c;
  c.embed_dim = 32;
  c.image_resolution = 40;
  c.vision_layers = {3};
  c.vision_width = 128;
  c.vision_patch_size = 8;  // 26 tokens
  c.vision_heads = 2;
  c.transformer_width = 128;
  c.transformer_heads = 4;
  c.transformer_layers = 2;
  c.activation = activation;
  Clip clip(c);
  torch::manual_seed(7);
  torch::NoGradGuard no_grad;
  for (auto& p : clip->parameters()) p.normal_(0, p.dim() == 1 ? 0.5 : 0.08);
  for (auto& item : clip->named_parameters())
    if (item.key().find("ln_") != std::string::npos && item.key().find("weight") != std::string::npos)
      item.value().add_(1);
  return clip;
}

// Relative max difference between the fused and the module-by-module pass of `f`.
double fused_vs_modules(const std::function<torch::Tensor()>& f) {
  auto fused = f();
  set_fused_inference(false);
  auto modules = f();
  set_fused_inference(true);
  return max_abs(fused, modules) / modules.abs().max().item<double>();
}

TEST(Clip, FusedInferenceEqualsModulePath) {
  // The comparison means something only where the fused pass runs (a BLAS sgemm is found).
  ASSERT_TRUE(vlmadapt::detail::fused_available());
  torch::NoGradGuard no_grad;
  for (auto act : {Activation::QuickGELU, Activation::GELU}) {
    Clip clip = random_small_clip(act);
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      // 1 image; an odd batch; one spanning several groups of sequences.
      for (int64_t n : {1, 7, 150}) {
        auto pixels = torch::randn({n, 3, 40, 40});
        EXPECT_LT(fused_vs_modules([&] { return clip->encode_image(pixels); }), 2e-5) << n << " images";
      }
      // The causal text tower, with prompts of different lengths.
      auto tokens = torch::randint(1, 1000, {9, 77}, torch::kLong);
      for (int64_t i = 0; i < 9; ++i) tokens.index_put_({i, 5 + 3 * i}, 49407);
      for (int64_t i = 0; i < 9; ++i) tokens.narrow(1, 6 + 3 * i, 71 - 3 * i).zero_();
      EXPECT_LT(fused_vs_modules([&] { return clip->encode_text(tokens); }), 2e-5);
    }
  }
  torch::set_num_threads(2);
}

TEST(Clip, ParallelPartsRunOnEveryThread) {
  // at::parallel_for runs in turn when its caller is compiled without OpenMP; the text
  // parts go through parallel_parts so that they really run at once.
  torch::set_num_threads(2);
  std::vector<std::thread::id> ids(2);
  vlmadapt::detail::parallel_parts(2, [&](int64_t i) { ids[i] = std::this_thread::get_id(); });
  EXPECT_NE(ids[0], ids[1]);
  // And an exception in a part reaches the caller.
  EXPECT_THROW(vlmadapt::detail::parallel_parts(2, [](int64_t i) { if (i == 1) throw Error("part 1"); }), Error);
}

TEST(Clip, MatrixProductsOnlyLastsItsScope) {
  // bench times the tower's products alone under this guard; outside it nothing changes.
  torch::NoGradGuard no_grad;
  Clip clip = load_clip((model_dir("tiny_vit") / "model_openai.pt").string());
  auto pixels = read_safetensors((model_dir("tiny_vit") / "golden.safetensors").string()).at("pixels");
  const auto before = clip->encode_image(pixels);
  torch::Tensor products_only, elsewhere;
  {
    vlmadapt::detail::MatrixProductsOnly guard;
    products_only = clip->encode_image(pixels);
    std::thread other([&] {  // another thread's pass runs whole meanwhile
      torch::NoGradGuard no_grad_there;
      elsewhere = clip->encode_image(pixels);
    });
    other.join();
  }
  EXPECT_FALSE(torch::allclose(products_only, before));  // the element-wise steps were skipped
  EXPECT_TRUE(torch::allclose(elsewhere, before, 1e-5, 1e-6));
  EXPECT_TRUE(torch::equal(clip->encode_image(pixels), before));
}

TEST(Clip, FusedInferenceOnRealWeights) {
  torch::NoGradGuard no_grad;
  Clip clip = load_clip((model_dir("tiny_vit") / "model_openai.pt").string());
  auto golden = read_safetensors((model_dir("tiny_vit") / "golden.safetensors").string());
  EXPECT_LT(fused_vs_modules([&] { return clip->encode_image(golden.at("pixels")); }), 1e-5);
  EXPECT_LT(fused_vs_modules([&] { return clip->encode_text(golden.at("tokens")); }), 1e-5);
}

TEST(Clip, GradientsStillFlowWhereNeeded) {
  // With gradients asked for, the module-by-module pass runs and autograd sees it.
  Clip clip = random_small_clip(Activation::QuickGELU);
  auto tokens = torch::randint(1, 1000, {3, 10}, torch::kLong);
  tokens.select(1, 9).fill_(49407);
  auto emb = clip->embed_tokens(tokens).detach().requires_grad_(true);
  auto out = clip->encode_text_embeddings(emb, tokens.argmax(-1));
  ASSERT_TRUE(out.requires_grad());
  out.sum().backward();
  EXPECT_GT(emb.grad().abs().sum().item<double>(), 0);
  // And a tuned tower (RLCF's image variant) gets gradients in its weights.
  auto visual = clip->visual();
  for (auto& p : visual->parameters()) p.set_requires_grad(true);
  clip->encode_image(torch::randn({2, 3, 40, 40})).sum().backward();
  for (auto& p : visual->parameters()) ASSERT_TRUE(p.grad().defined());
}

// ---- bad input -------------------------------------------------------------

using vlmadapt::testing::error_of;

TEST(ClipErrors, MissingFile) {
  auto msg = error_of([] { load_clip("/nonexistent/model.pt"); });
  EXPECT_NE(msg.find("/nonexistent/model.pt"), std::string::npos) << msg;
}

TEST(ClipErrors, TruncatedCheckpoints) {
  auto dir = vt::temp_dir("truncated");
  for (const auto& file : {"model_openai.pt", "model_openclip.safetensors", "model_openclip.bin"}) {
    const auto src = model_dir("tiny_rn") / file;
    const auto dst = (dir / file).string();
    std::ifstream in(src, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dst, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
    auto msg = error_of([&] { load_clip(dst); });
    EXPECT_NE(msg.find(dst), std::string::npos) << file << ": " << msg;
  }
  fs::remove_all(dir);
}

TEST(ClipErrors, UnknownLayoutAndWrongShape) {
  auto dir = vt::temp_dir("layout");
  const auto odd = (dir / "odd.safetensors").string();
  write_safetensors(odd, {{"encoder.weight", torch::zeros({2, 2})}});
  auto msg = error_of([&] { load_clip(odd); });
  EXPECT_NE(msg.find("unknown checkpoint layout"), std::string::npos) << msg;
  EXPECT_NE(msg.find(odd), std::string::npos) << msg;

  auto sd = read_safetensors((model_dir("tiny_vit") / "model_openclip.safetensors").string());
  sd["ln_final.bias"] = torch::zeros({7});
  const auto bad = (dir / "bad.safetensors").string();
  write_safetensors(bad, sd);
  msg = error_of([&] { load_clip(bad); });
  EXPECT_NE(msg.find("ln_final.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;

  const auto not_model = (dir / "text.pt").string();
  std::ofstream(not_model) << "this is not a checkpoint at all";
  msg = error_of([&] { load_clip(not_model); });
  EXPECT_NE(msg.find(not_model), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(ClipErrors, WrongInputShapes) {
  Clip clip = load_clip((model_dir("tiny_vit") / "model_openclip.safetensors").string());
  EXPECT_THROW(clip->encode_image(torch::zeros({1, 3, 31, 31})), Error);
  EXPECT_THROW(clip->encode_text(torch::zeros({1, 78}, torch::kLong)), Error);
  EXPECT_THROW(clip->encode_text(torch::zeros({1, 77}, torch::kFloat)), Error);
}

}  // namespace
