// Methods that modify the frozen towers' weights through hooks (clip_lora): they start at
// zero-shot CLIP bit for bit, learn only their own factors, and modify exactly the weights
// they name, checked on the tiny fixture model against values worked out by hand.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include <vlmadapt/backbone/checkpoint.h>

#include "methods/clip_lora.h"
#include "test_support.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
namespace m = vlmadapt::methods;
using vlmadapt::TaskContext;

namespace {

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover"};

vlmadapt::Clip& clip() { return vt::tiny_vit_clip(); }

TaskContext task() {
  TaskContext t;
  t.clip = clip();
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}."};
  return t;
}

torch::Tensor pixels(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n, 3, clip()->image_resolution(), clip()->image_resolution()});
}

TEST(ClipLora, StartsAtZeroShotBitForBit) {
  torch::manual_seed(0);
  m::ClipLora lora(m::ClipLoraOptions{});
  lora.setup(task());
  auto px = pixels(3, 1);
  std::vector<std::string> texts;
  for (const auto& c : kClasses) texts.push_back("a photo of a " + c + ".");
  auto tokens = vlmadapt::Tokenizer().tokenize(texts);
  torch::NoGradGuard no_grad;
  auto frozen_text = clip()->encode_text(tokens), frozen_image = clip()->encode_image(px);
  vlmadapt::HooksScope scope(*clip(), lora.hooks());
  EXPECT_TRUE(torch::equal(clip()->encode_text(tokens), frozen_text));
  EXPECT_TRUE(torch::equal(clip()->encode_image(px), frozen_image));
}

TEST(ClipLora, LearnsOnlyItsFactorsAndBFirst) {
  torch::manual_seed(0);
  m::ClipLora lora(m::ClipLoraOptions{});
  lora.setup(task());
  // 2 towers x 2 blocks x q, k, v x (A [2,128] + B [128,2]) on the tiny model.
  int64_t count = 0;
  for (const auto& p : lora.named_parameters()) {
    EXPECT_EQ(p.key().rfind("lora_", 0), 0u) << p.key();
    count += p.value().numel();
  }
  EXPECT_EQ(count, 2 * 2 * 3 * (2 * 128 + 128 * 2));
  EXPECT_EQ(lora.state().size(), 2u * 2 * 3 * 2);  // the saved state is the factors only
  vlmadapt::Batch b;
  b.pixels = pixels(4, 2);
  b.labels = torch::tensor({0, 1, 2, 0});
  lora.loss(b).backward();
  // With B = 0, dL/dA = s Bᵀ (...) = 0: B moves first.
  auto params = lora.named_parameters();
  EXPECT_EQ(params["lora_A_visual_1_q"].grad().abs().max().item<double>(), 0.0);
  EXPECT_GT(params["lora_B_visual_1_q"].grad().abs().max().item<double>(), 0.0);
  EXPECT_GT(params["lora_B_text_0_v"].grad().abs().max().item<double>(), 0.0);
  for (const auto& p : clip()->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(ClipLora, ModifiesExactlyTheNamedRows) {
  m::ClipLoraOptions o;
  o.params = {"k", "o"};
  o.encoder = m::LoraEncoder::Text;
  o.rank = 1;
  o.alpha = 2;  // scale 2 / sqrt(1) = 2
  m::ClipLora lora(o);
  lora.setup(task());
  auto params = lora.named_parameters();
  ASSERT_EQ(params.size(), 2u * 2 * 2);  // text only: 2 blocks x (k, o) x (A, B)
  {
    torch::NoGradGuard no_grad;
    params["lora_A_text_1_k"].fill_(0.5);
    params["lora_B_text_1_k"].fill_(0.25);
    params["lora_A_text_1_o"].fill_(1.0);
    params["lora_B_text_1_o"].fill_(-1.0);
  }
  const auto hooks = [&] {
    torch::NoGradGuard no_grad;  // evaluation: the updates merged into the weights
    return lora.hooks();
  }();
  const auto weights = clip()->weights();
  const auto& in_proj = weights.at("transformer.resblocks.1.attn.in_proj_weight");
  auto w = hooks.modifiers.at("transformer.resblocks.1.attn.in_proj_weight")(in_proj);
  const int64_t d = 128;
  // q and v rows untouched; k rows + 2 * (0.25 * 0.5) = + 0.25 everywhere.
  EXPECT_TRUE(torch::equal(w.narrow(0, 0, d), in_proj.narrow(0, 0, d)));
  EXPECT_TRUE(torch::equal(w.narrow(0, 2 * d, d), in_proj.narrow(0, 2 * d, d)));
  EXPECT_TRUE(torch::allclose(w.narrow(0, d, d), in_proj.narrow(0, d, d) + 0.25));
  const auto& out = weights.at("transformer.resblocks.1.attn.out_proj.weight");
  EXPECT_TRUE(torch::allclose(hooks.modifiers.at("transformer.resblocks.1.attn.out_proj.weight")(out), out - 2.0));
  EXPECT_EQ(hooks.modifiers.count("visual.transformer.resblocks.1.attn.in_proj_weight"), 0u);
}

// Training passes put each factor pair beside its map with dropout on the input (the
// code's LinearLoRA); evaluation merges the updates into the weights. With a vanishing
// dropout the two agree (the branches' q, v and zero k columns sit where the merged rows
// do); with the paper's 0.25 a training pass is random, repeatable from the seed, and
// evaluation is not random.
TEST(ClipLora, DropoutBranchesInTrainingMergedWeightsInEvaluation) {
  auto logits_of = [](double dropout) {
    m::ClipLoraOptions o;
    o.params = {"q", "v", "o"};
    o.dropout = dropout;
    torch::manual_seed(0);
    auto lora = std::make_shared<m::ClipLora>(o);
    lora->setup(task());
    torch::NoGradGuard no_grad;
    for (auto& p : lora->parameters()) p.copy_(torch::randn(p.sizes()) * 0.1);
    return lora;
  };
  vlmadapt::Batch b;
  b.pixels = pixels(3, 4);
  auto evaluate = [&](m::ClipLora& lora) {
    torch::NoGradGuard no_grad;
    return lora.logits(b);
  };
  auto almost = logits_of(1e-9);
  const auto merged = evaluate(*almost);
  EXPECT_TRUE(torch::allclose(almost->logits(b), merged, 1e-4, 1e-4));
  auto paper = logits_of(0.25);
  EXPECT_TRUE(torch::equal(evaluate(*paper), merged));  // the same factors, merged
  const auto first = paper->logits(b), second = paper->logits(b);
  EXPECT_FALSE(torch::allclose(first, merged, 1e-3, 1e-3));
  EXPECT_FALSE(torch::equal(first, second));
  torch::manual_seed(7);
  const auto seeded = paper->logits(b);
  torch::manual_seed(7);
  EXPECT_TRUE(torch::equal(paper->logits(b), seeded));
  EXPECT_TRUE(torch::equal(evaluate(*paper), evaluate(*paper)));
}

TEST(ClipLora, PositionsAreThePapersBlocksOnTwelveLayers) {
  using P = m::LoraPosition;
  auto range = [](int64_t a, int64_t b) {
    std::vector<int64_t> v;
    for (int64_t i = a; i <= b; ++i) v.push_back(i);
    return v;
  };
  EXPECT_EQ(m::ClipLora::blocks(P::All, 12), range(0, 11));
  EXPECT_EQ(m::ClipLora::blocks(P::Bottom, 12), range(0, 3));
  EXPECT_EQ(m::ClipLora::blocks(P::Mid, 12), range(4, 7));
  EXPECT_EQ(m::ClipLora::blocks(P::Up, 12), range(8, 11));
  EXPECT_EQ(m::ClipLora::blocks(P::HalfUp, 12), range(6, 11));
  EXPECT_EQ(m::ClipLora::blocks(P::HalfBottom, 12), range(0, 5));
  EXPECT_EQ(m::ClipLora::blocks(P::Top3, 12), range(9, 11));
  EXPECT_EQ(m::ClipLora::blocks(P::HalfUp, 24), range(12, 23));  // ViT-L/14
}

TEST(ClipLora, BadOptionsNameTheKey) {
  auto setup_error = [](const std::map<std::string, std::string>& values) {
    return vt::error_of([&] { vlmadapt::make_method("clip_lora", values)->setup(task()); });
  };
  EXPECT_NE(setup_error({{"clip_lora.params", "q|x"}}).find("clip_lora.params"), std::string::npos);
  EXPECT_NE(setup_error({{"clip_lora.position", "bottom"}}).find("clip_lora.position"), std::string::npos);
  EXPECT_NE(vt::error_of([] { vlmadapt::make_method("clip_lora", {{"clip_lora.rank", "0"}}); }).find("clip_lora.rank"),
            std::string::npos);
  EXPECT_NE(vt::error_of([] { vlmadapt::make_method("clip_lora", {{"clip_lora.dropout", "1.5"}}); })
                .find("clip_lora.dropout"),
            std::string::npos);
  auto rn = vlmadapt::load_clip(vt::tiny_rn());
  TaskContext t = task();
  t.clip = rn;
  EXPECT_NE(vt::error_of([&] { vlmadapt::make_method("clip_lora")->setup(t); }).find("clip_lora.encoder"),
            std::string::npos);
}

}  // namespace
