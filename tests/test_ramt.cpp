// R-AMT (methods/ramt.h): binary masks on the frozen image tower through weight modifiers.
// It starts at zero-shot CLIP bit for bit, its straight-through gradient is ∂L/∂W' ⊙ W,
// its regulariser is the sum of the scores' L2 norms, and gradient dropout keeps g_a by
// the rule of the code, with draws that a resumed run repeats; checked on the tiny model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vlmadapt/backbone/checkpoint.h>

#include "bench/bench.h"
#include "methods/ramt.h"
#include "test_support.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
namespace m = vlmadapt::methods;
using vlmadapt::Batch;
using vlmadapt::TaskContext;

namespace {

// Mixed case and an underscore: R-AMT lowercases names and writes '_' as ' '.
const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Ankle_Boot"};
const std::vector<std::string> kWritten = {"t-shirt/top", "trouser", "ankle boot"};
const std::string kTemplate = "a photo of a {}, a type of clothing.";

vlmadapt::Clip& clip() { return vt::tiny_vit_clip(); }

TaskContext task(uint64_t seed = 1) {
  TaskContext t;
  t.clip = clip();
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}."};
  t.seed = seed;
  return t;
}

std::shared_ptr<m::Ramt> ramt(m::RamtOptions o = {}, uint64_t seed = 1) {
  o.templ = kTemplate;
  auto r = std::make_shared<m::Ramt>(o);
  r->setup(task(seed));
  return r;
}

Batch batch(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  Batch b;
  b.pixels = torch::randn({n, 3, clip()->image_resolution(), clip()->image_resolution()});
  b.labels = torch::arange(n) % static_cast<int64_t>(kClasses.size());
  return b;
}

// Zero-shot CLIP's classifier with the same template and names (the fused pass, as setup's).
torch::Tensor zero_shot_text() {
  static const torch::Tensor text = vlmadapt::class_text_features(clip(), vlmadapt::Tokenizer(), kWritten, {kTemplate});
  return text;
}

// Zero-shot CLIP's logits, with the hooks set at the time (none in a test that sets none).
torch::Tensor zero_shot_logits(const torch::Tensor& pixels) {
  return vlmadapt::cosine_logits(clip(), clip()->encode_image(pixels), zero_shot_text());
}

torch::Tensor score(m::Ramt& r, const std::string& weight) {
  auto key = "score_" + weight;
  std::replace(key.begin(), key.end(), '.', '_');
  return r.named_parameters()[key];
}

TEST(Ramt, StartsAtZeroShotBitForBit) {
  auto r = ramt();
  const auto b = batch(4, 1);
  EXPECT_TRUE(torch::equal(r->text_features(), zero_shot_text()));
  torch::NoGradGuard no_grad;
  for (bool fused : {true, false}) {
    vlmadapt::set_fused_inference(fused);
    const auto z = r->logits(b), z0 = zero_shot_logits(b.pixels);
    EXPECT_TRUE(torch::equal(z, z0)) << "fused " << fused << ": max diff " << (z - z0).abs().max().item<double>();
  }
  vlmadapt::set_fused_inference(true);
}

TEST(Ramt, StraightThroughGradientIsTheWeightTimesTheMaskedWeightsGradient) {
  m::RamtOptions o;
  o.reg_weight = 0, o.gdr_lambda = 0;  // the loss is the cross-entropy alone
  auto r = ramt(o);
  const std::vector<std::string> checked = {"visual.conv1.weight", "visual.transformer.resblocks.1.attn.out_proj.weight"};
  {
    torch::NoGradGuard no_grad;  // drop every other weight of both: the gradient reaches dropped ones too
    for (const auto& w : checked) score(*r, w).view(-1).slice(0, 0, c10::nullopt, 2).fill_(0);
  }
  // run.json's sparsity counts the dropped halves (odd sizes round up).
  double off = 0, total = 0;
  for (const auto& p : r->named_parameters()) total += static_cast<double>(p.value().numel());
  for (const auto& w : checked) off += static_cast<double>((score(*r, w).numel() + 1) / 2);
  EXPECT_NEAR(r->chosen().at("mask_sparsity_percent"), 100 * off / total, 1e-9);
  const auto b = batch(4, 2);
  r->loss(b).backward();
  // Independently: the masked weights W ⊙ B as leaves, everything else as stored (its mask is ones).
  const auto weights = clip()->weights();
  vlmadapt::TowerHooks leaves_hooks;
  std::map<std::string, torch::Tensor> leaves;
  for (const auto& w : checked) {
    const auto binary = (score(*r, w) > o.threshold).to(torch::kFloat).detach();
    leaves[w] = (weights.at(w) * binary).requires_grad_(true);
    leaves_hooks.modifiers[w] = [leaf = leaves[w]](const torch::Tensor&) { return leaf; };
  }
  {
    vlmadapt::HooksScope scope(*clip(), leaves_hooks);
    torch::nn::functional::cross_entropy(zero_shot_logits(b.pixels), b.labels).backward();
  }
  for (const auto& w : checked) {
    const auto expected = leaves[w].grad() * weights.at(w);
    const auto got = score(*r, w).grad();
    ASSERT_TRUE(got.defined()) << w;
    EXPECT_GT(expected.abs().max().item<double>(), 0.0) << w;
    EXPECT_TRUE(torch::allclose(got, expected, 1e-4, 1e-7)) << w << ": max diff "
                                                             << (got - expected).abs().max().item<double>();
  }
  // Evaluation applies the binary mask: the same logits as the stored weights times B.
  torch::NoGradGuard no_grad;
  vlmadapt::HooksScope scope(*clip(), leaves_hooks);
  EXPECT_TRUE(torch::allclose(r->logits(b), zero_shot_logits(b.pixels), 1e-5, 1e-6));
}

TEST(Ramt, RegulariserIsTheSumOfTheScoresL2Norms) {
  m::RamtOptions o;
  o.gdr_lambda = 0;
  auto r = ramt(o);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : r->parameters()) p.fill_(0.01);
    auto conv = score(*r, "visual.conv1.weight").view(-1);
    conv.fill_(0), conv[0] = 3, conv[1] = 4;  // ‖·‖₂ = 5
    auto in_proj = score(*r, "visual.transformer.resblocks.0.attn.in_proj_weight").view(-1);
    in_proj.fill_(0), in_proj[7] = -2;  // ‖·‖₂ = 2
  }
  // The other tensors: 0.01 · sqrt(numel) each.
  double expected = 5 + 2;
  for (const auto& p : r->named_parameters())
    if (p.key().find("conv1") == std::string::npos && p.key().find("resblocks_0_attn_in_proj") == std::string::npos)
      expected += 0.01 * std::sqrt(static_cast<double>(p.value().numel()));
  EXPECT_NEAR(r->regulariser().item<double>(), expected, 1e-4);
  // loss() adds reg_weight times it to the cross-entropy.
  const auto b = batch(3, 3);
  o.reg_weight = 0;
  auto plain = ramt(o);
  plain->load_state(r->state(), "test");
  EXPECT_NEAR((r->loss(b) - plain->loss(b)).item<double>(), 1e-4 * expected, 1e-6);
}

TEST(Ramt, LearnsOnlyOneScorePerMaskedWeight) {
  auto names = [](const m::RamtOptions& o) {
    auto r = ramt(o);
    std::set<std::string> keys;
    for (const auto& p : r->named_parameters()) keys.insert(p.key());
    return keys;
  };
  auto expected = [](bool conv1, bool mlp) {
    std::set<std::string> keys;
    if (conv1) keys.insert("score_visual_conv1_weight");
    for (int i = 0; i < 2; ++i) {  // the tiny ViT's 2 blocks
      const std::string block = "score_visual_transformer_resblocks_" + std::to_string(i) + "_";
      keys.insert(block + "attn_in_proj_weight"), keys.insert(block + "attn_out_proj_weight");
      if (mlp) keys.insert(block + "mlp_c_fc_weight"), keys.insert(block + "mlp_c_proj_weight");
    }
    return keys;
  };
  m::RamtOptions o;
  EXPECT_EQ(names(o), expected(true, false));
  o.mask_mlp = true;
  EXPECT_EQ(names(o), expected(true, true));
  o.mask_conv1 = false;
  EXPECT_EQ(names(o), expected(false, true));

  // Each score has its weight's shape and `scale`; all of them learn, CLIP does not.
  auto r = ramt();
  const auto weights = clip()->weights();
  for (const auto& w : r->masked_weights()) {
    EXPECT_EQ(score(*r, w).sizes(), weights.at(w).sizes()) << w;
    EXPECT_TRUE(torch::equal(score(*r, w), torch::full_like(weights.at(w), 1e-2))) << w;
  }
  EXPECT_EQ(r->trainable_parameters().size(), 1u + 2 * 2);
  EXPECT_EQ(r->state().size(), 1u + 2 * 2 + 1);  // the scores and gdr_step
  r->loss(batch(4, 4)).backward();
  for (const auto& p : r->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().max().item<double>(), 0.0) << p.key();
  }
  for (const auto& p : clip()->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(Ramt, GradientDropoutKeepsByAgreement) {
  torch::manual_seed(5);
  const int64_t n = 100000;
  // Magnitudes of at least 1, so that the 1e-8 in P's denominator rounds away.
  const auto g_a = torch::randn({n}).sign() * (torch::rand({n}) + 1);
  const auto u = torch::rand({n});
  // Agreeing signs: P = 1, g_a is always kept.
  EXPECT_TRUE(torch::equal(m::Ramt::gradient_dropout(g_a, g_a * (torch::rand({n}) + 1), u, 1.0), g_a));
  // λ = 0: g_a whatever g_b says.
  EXPECT_TRUE(torch::equal(m::Ramt::gradient_dropout(g_a, -3 * g_a, u, 0.0), g_a));
  // Equal and opposite: P = 1/2, so about half of g_a is kept and the rest is 0.
  const auto half = m::Ramt::gradient_dropout(g_a, -g_a, u, 1.0);
  const auto kept = (half == g_a), dropped = (half == 0);
  EXPECT_TRUE((kept | dropped).all().item<bool>());
  EXPECT_NEAR(kept.to(torch::kDouble).mean().item<double>(), 0.5, 0.01);
  // λ = 0.5 scales a dropped element by 1 − λ.
  const auto soft = m::Ramt::gradient_dropout(g_a, -g_a, u, 0.5);
  EXPECT_TRUE(((soft == g_a) | (soft == 0.5 * g_a)).all().item<bool>());

  // after_backward applies it to every score and counts the step.
  auto r = ramt();
  r->loss(batch(4, 6)).backward();
  std::vector<torch::Tensor> before;
  for (const auto& p : r->parameters()) before.push_back(p.grad().clone());
  r->after_backward();
  size_t i = 0;
  for (const auto& p : r->parameters()) {
    const auto g = p.grad(), b = before[i++];
    EXPECT_TRUE(((g == b) | (g == 0)).all().item<bool>());
  }
  EXPECT_EQ(r->state().at("gdr_step").item<int64_t>(), 1);
}

TEST(Ramt, DropoutDrawsRepeatAfterResume) {
  auto a = ramt({}, 7), b = ramt({}, 7), other_seed = ramt({}, 8);
  const auto first = a->uniforms();
  ASSERT_EQ(first.size(), 5u);
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_TRUE(torch::equal(first[i], b->uniforms()[i]));
    EXPECT_FALSE(torch::equal(first[i], other_seed->uniforms()[i]));
  }
  torch::manual_seed(123);  // the global stream does not matter
  a->after_backward(), a->after_backward();  // two steps (no gradients: only the counter moves)
  const auto third = a->uniforms();
  EXPECT_FALSE(torch::equal(third[0], first[0]));
  // A run resumed from a's state draws what a draws.
  auto resumed = ramt({}, 7);
  resumed->load_state(a->state(), "test");
  for (size_t i = 0; i < third.size(); ++i) EXPECT_TRUE(torch::equal(third[i], resumed->uniforms()[i]));
}

TEST(Ramt, BadInputNamesTheKey) {
  auto make_error = [](const std::map<std::string, std::string>& values) {
    return vt::error_of([&] { vlmadapt::make_method("ramt", values); });
  };
  EXPECT_NE(make_error({{"ramt.threshold", "0.01"}}).find("ramt.threshold"), std::string::npos);
  EXPECT_NE(make_error({{"ramt.scale", "0.001"}}).find("ramt.threshold"), std::string::npos);
  EXPECT_NE(make_error({{"ramt.scale", "0"}}).find("ramt.scale"), std::string::npos);
  EXPECT_NE(make_error({{"ramt.reg_weight", "-1"}}).find("ramt.reg_weight"), std::string::npos);
  EXPECT_NE(make_error({{"ramt.gdr_lambda", "-0.5"}}).find("ramt.gdr_lambda"), std::string::npos);
  EXPECT_NE(make_error({{"ramt.gdr_lambda", "2"}}).find("ramt.gdr_lambda"), std::string::npos);
  EXPECT_NE(make_error({{"ramt.gdr_temperature", "0"}}).find("ramt.gdr_temperature"), std::string::npos);
  TaskContext t = task();
  t.clip = vlmadapt::load_clip(vt::tiny_rn());
  const auto msg = vt::error_of([&] { vlmadapt::make_method("ramt")->setup(t); });
  EXPECT_NE(msg.find("model.checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ModifiedResNet"), std::string::npos) << msg;
}

// vlmadapt bench step takes methods that run the image tower on pixels, as ramt does.
TEST(Ramt, BenchStepTimesItOnPixels) {
  vlmadapt::BenchOptions o;
  o.task = "step";
  o.arch = "default";
  o.n_cls = 5;
  o.batch = 4;
  o.reps = 1;
  o.method = "ramt";
  const auto out = vlmadapt::run_bench(o);
  EXPECT_GT(out.at("seconds_per_step").get<double>(), 0);
  EXPECT_GT(out.at("peak_tensor_mb").get<double>(), 0);
}

}  // namespace
