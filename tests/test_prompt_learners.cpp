// The mechanics of the prompt learners beyond CoOp (kgcoop, prograd, maple, promptsrc) on
// the tiny fixture model: what learns, what stays frozen, and their extra terms against
// values worked out by hand or by an independent computation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include <vlmadapt/backbone/checkpoint.h>

#include "methods/kgcoop.h"
#include "methods/maple.h"
#include "methods/prograd.h"
#include "methods/promptsrc.h"
#include "methods/zeroshot.h"
#include "test_support.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
using vlmadapt::Batch;
using vlmadapt::TaskContext;
namespace m = vlmadapt::methods;

namespace {

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"};

vlmadapt::Clip& clip() { return vt::tiny_vit_clip(); }

TaskContext task() {
  TaskContext t;
  t.clip = clip();
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}."};
  return t;
}

Batch pixels_batch(int64_t n, uint64_t seed, bool features) {
  torch::manual_seed(seed);
  const int64_t r = clip()->image_resolution();
  Batch b;
  b.pixels = torch::randn({n, 3, r, r});
  b.labels = torch::arange(n) % static_cast<int64_t>(kClasses.size());
  if (features) {
    torch::NoGradGuard no_grad;
    b.image_features = clip()->encode_image(b.pixels);
  }
  return b;
}

std::vector<std::string> names_of(vlmadapt::Method& method) {
  std::vector<std::string> out;
  for (const auto& p : method.named_parameters())
    if (p.value().requires_grad()) out.push_back(p.key());
  return out;
}

// ---- KgCoOp -------------------------------------------------------------------

TEST(Kgcoop, KnowledgeTermIsZeroWhenTheContextIsTheHandWrittenPrompt) {
  m::KgcoopOptions o;  // ctx from "a photo of a"; the reference template "a photo of a {}."
  m::Kgcoop kg(o);
  kg.setup(task());
  EXPECT_EQ(names_of(kg), (std::vector<std::string>{"prompt_learner.ctx"}));
  EXPECT_EQ(kg.state().size(), 1u);  // the reference features are derived, not saved
  {
    torch::NoGradGuard no_grad;
    EXPECT_LT(std::abs(kg.knowledge_term(kg.text()).item<double>()), 1e-6);
  }
  // Another template, or a moved context: the term is positive, and the loss is CE + w * term.
  {
    torch::NoGradGuard no_grad;
    kg.learner()->ctx().add_(0.05 * torch::randn_like(kg.learner()->ctx()));
  }
  auto b = pixels_batch(6, 3, true);
  auto term = kg.knowledge_term(kg.text());
  EXPECT_GT(term.item<double>(), 1e-4);
  auto ce = torch::nn::functional::cross_entropy(kg.logits(b), b.labels);
  EXPECT_NEAR(kg.loss(b).item<double>(), ce.item<double>() + 8.0 * term.item<double>(), 1e-5);
}

TEST(Kgcoop, ReferenceUsesTheTemplateOption) {
  m::KgcoopOptions o;
  o.templ = "a photo of a {}, a type of clothing.";
  m::Kgcoop kg(o);
  kg.setup(task());
  auto expected = vlmadapt::class_text_features(clip(), vlmadapt::Tokenizer(), kClasses, {o.templ});
  EXPECT_TRUE(torch::allclose(kg.reference(), expected, 0, 1e-6));
  torch::NoGradGuard no_grad;
  EXPECT_GT(kg.knowledge_term(kg.text()).item<double>(), 1e-4);  // the learned prompt lacks the suffix
}

// ---- ProGrad ------------------------------------------------------------------

TEST(Prograd, AlignedGradientRemovesTheConflictingComponentOnly) {
  auto g_ce = torch::tensor({1.0, 0.0}), g_kl = torch::tensor({-1.0, 1.0});
  // <g_ce, g_kl> = -1 < 0: g = g_ce - λ (-1 / 2) g_kl = [0.5, 0.5] for λ = 1, orthogonal to g_kl.
  EXPECT_TRUE(torch::allclose(m::Prograd::aligned(g_ce, g_kl, 1.0), torch::tensor({0.5, 0.5})));
  EXPECT_TRUE(torch::allclose(m::Prograd::aligned(g_ce, g_kl, 0.8), torch::tensor({0.6, 0.4})));
  // No conflict: unchanged.
  EXPECT_TRUE(torch::equal(m::Prograd::aligned(g_ce, torch::tensor({1.0, 5.0}), 1.0), g_ce));
}

TEST(Prograd, ContextStartsAsZerosThenTheTemplatesWords) {
  torch::manual_seed(0);
  m::Prograd pg(m::ProgradOptions{});
  pg.setup(task());
  auto ctx = pg.learner()->ctx();
  ASSERT_EQ(ctx.sizes(), (std::vector<int64_t>{16, 128}));
  EXPECT_EQ(ctx.narrow(0, 0, 12).abs().max().item<double>(), 0.0);
  auto ids = vlmadapt::Tokenizer().tokenize({"a photo of a"});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(ctx.narrow(0, 12, 4), clip()->embed_tokens(ids)[0].narrow(0, 1, 4)));
  EXPECT_EQ(m::Prograd::template_words("a type of pet, a photo of a {}."), "a type of pet, a photo of a");
  EXPECT_NE(vt::error_of([] { m::Prograd::template_words("a {} in a video game."); }).find("prograd.template"),
            std::string::npos);
}

TEST(Prograd, StepTakesTheProjectedGradient) {
  torch::manual_seed(1);
  m::ProgradOptions o;
  o.init_from_template = false;  // random context: the two gradients conflict somewhere
  m::Prograd pg(o);
  pg.setup(task());
  auto ctx = pg.learner()->ctx();
  auto b = pixels_batch(10, 4, true);
  {  // labels the teacher finds least likely: the two gradients pull apart
    torch::NoGradGuard no_grad;
    b.labels = vlmadapt::cosine_logits(clip(), b.image_features, pg.teacher()).argmin(1);
  }
  // Independently: both gradients of the same forward pass, then the projection.
  auto z = pg.logits(b);
  auto g_kl = torch::autograd::grad({pg.distillation(z, b)}, {ctx}, {}, true)[0];
  auto g_ce = torch::autograd::grad({torch::nn::functional::cross_entropy(z, b.labels)}, {ctx})[0];
  ASSERT_LT((g_ce * g_kl).sum().item<double>(), 0) ;
  auto expected = m::Prograd::aligned(g_ce, g_kl, 1.0);
  // The method's way: loss() takes g_kl, backward gives g_ce, after_backward projects.
  auto loss = pg.loss(b);
  EXPECT_NEAR(loss.item<double>(), torch::nn::functional::cross_entropy(z, b.labels).item<double>(), 1e-6);
  loss.backward();
  EXPECT_TRUE(torch::allclose(ctx.grad(), g_ce, 1e-5, 1e-7));
  pg.after_backward();
  EXPECT_TRUE(torch::allclose(ctx.grad(), expected, 1e-5, 1e-7));
  EXPECT_NEAR((ctx.grad() * g_kl).sum().item<double>(), 0.0, 1e-6 * g_kl.norm().item<double>() * g_ce.norm().item<double>());
}

// ---- deep prompts: MaPLe and PromptSRC ----------------------------------------

TEST(Maple, LearnsTextTokensAndTheirProjectionsOnly) {
  torch::manual_seed(2);
  m::MapleOptions o;
  o.prompt.depth_text = 2;  // the tiny tower has 2 layers
  m::Maple maple(o);
  maple.setup(task());
  EXPECT_EQ(names_of(maple), (std::vector<std::string>{"prompt_learner.ctx", "prompt_learner.text_deep_1",
                                                       "prompt_learner.proj.weight", "prompt_learner.proj.bias",
                                                       "prompt_learner.projection_1.weight",
                                                       "prompt_learner.projection_1.bias"}));
  auto& learner = maple.learner();
  auto hooks = learner->hooks();
  ASSERT_EQ(hooks.image.depth(), 2);
  ASSERT_EQ(hooks.text.depth(), 2);
  // The image tokens are the projections of the text tokens (the coupling).
  auto params = learner->named_parameters();
  auto proj = torch::addmm(params["proj.bias"], params["ctx"], params["proj.weight"].t());
  EXPECT_TRUE(torch::allclose(hooks.image.tokens[0], proj, 1e-6, 1e-6));
  // The text context is "a photo" out of "a photo of a".
  {
    torch::NoGradGuard no_grad;
    auto ids = vlmadapt::Tokenizer().tokenize({"a photo of a"});
    EXPECT_TRUE(torch::equal(params["ctx"], clip()->embed_tokens(ids)[0].narrow(0, 1, 2)));
  }
  // Gradients reach the projections through the image tower.
  auto b = pixels_batch(4, 5, false);
  maple.loss(b).backward();
  EXPECT_GT(params["proj.weight"].grad().abs().sum().item<double>(), 0);
  EXPECT_GT(params["text_deep_1"].grad().abs().sum().item<double>(), 0);
}

TEST(Maple, DepthBeyondTheTowerIsAClearError) {
  m::MapleOptions o;  // the default depth 9 on a 2-layer tower
  m::Maple maple(o);
  const auto message = vt::error_of([&] { maple.setup(task()); });
  EXPECT_NE(message.find("maple.depth"), std::string::npos) << message;
  EXPECT_NE(message.find("[1, 2]"), std::string::npos) << message;
}

TEST(DeepPrompts, WithoutTokensTheFeaturesAreTheFrozenTowersBitForBit) {
  // No learnable tokens in either tower (depth 0 on both sides): the towers run as without
  // hooks, on the hand-written prompt.
  m::PromptsrcOptions o;
  o.prompt.n_text = 0;
  o.prompt.n_image = 0;
  m::Promptsrc src(o);
  src.setup(task());
  EXPECT_TRUE(names_of(src).empty());
  auto b = pixels_batch(3, 6, true);
  torch::NoGradGuard no_grad;
  std::vector<std::string> texts;
  for (const auto& c : kClasses) texts.push_back("a photo of a " + c + ".");
  EXPECT_TRUE(torch::equal(src.learner()->text_features(), clip()->encode_text(vlmadapt::Tokenizer().tokenize(texts))));
  EXPECT_TRUE(torch::equal(src.learner()->image_features(b.pixels), b.image_features));
  // And so the logits are zero-shot CLIP's (which normalises its one template twice).
  auto zs = vlmadapt::make_method("zeroshot");
  zs->setup(task());
  EXPECT_TRUE(torch::allclose(src.logits(b), zs->logits(b), 0, 1e-4));
}

TEST(Promptsrc, GaussianWeightsSumToOneAndPeakAtTheMean) {
  double sum = 0;
  for (int e = 1; e <= 20; ++e) sum += m::Promptsrc::gpa_weight(e, 20, 15, 1);
  EXPECT_NEAR(sum, 1.0, 1e-12);
  // σ = 1 over 1..20 around 15: the normaliser is √(2π) to 1e-6, so g_15 = 1/√(2π).
  EXPECT_NEAR(m::Promptsrc::gpa_weight(15, 20, 15, 1), 1 / std::sqrt(2 * M_PI), 1e-6);
  EXPECT_NEAR(m::Promptsrc::gpa_weight(14, 20, 15, 1), m::Promptsrc::gpa_weight(16, 20, 15, 1), 1e-15);
  EXPECT_NE(vt::error_of([] { m::Promptsrc::gpa_weight(1, 3, 1e6, 1); }).find("gpa_mean"), std::string::npos);
}

TEST(Promptsrc, AggregatesThePromptsOverEpochs) {
  m::PromptsrcOptions o;
  o.prompt.depth_text = o.prompt.depth_image = 2;
  o.gpa_mean = 3;
  o.gpa_std = 1;
  m::Promptsrc src(o);
  src.setup(task());
  auto ctx = src.learner()->named_parameters()["ctx"];
  // θ_e = e in epochs 1..3: the result is Σ g_e e with g ∝ (e^-2, e^-1/2, 1).
  for (int e = 0; e < 3; ++e) {
    {
      torch::NoGradGuard no_grad;
      for (auto& p : src.learner()->parameters()) p.fill_(e + 1);
    }
    src.on_epoch_end(e, 3);
    if (e < 2) EXPECT_EQ(ctx.max().item<double>(), e + 1);  // the prompts move only at the end
  }
  const double w1 = std::exp(-2.0), w2 = std::exp(-0.5), w3 = 1;
  const double expected = (w1 * 1 + w2 * 2 + w3 * 3) / (w1 + w2 + w3);
  for (const auto& p : src.learner()->parameters()) {
    EXPECT_NEAR(p.min().item<double>(), expected, 1e-5);
    EXPECT_NEAR(p.max().item<double>(), expected, 1e-5);
  }
  // The running sum is saved state (a resumed run continues it).
  EXPECT_EQ(src.state().count("gpa.ctx"), 1u);
}

TEST(Promptsrc, AgreementIsTheBatchSummedKlOverTheLogitCount) {
  // p0 = (1/2, 1/2), p = (3/4, 1/4): KL = ½ ln(4/3), over B·C = 2 logits.
  auto z0 = torch::zeros({1, 2}), z = torch::tensor({{std::log(3.0), 0.0}});
  EXPECT_NEAR(m::Promptsrc::agreement(z, z0).item<double>(), 0.5 * std::log(4.0 / 3.0) / 2, 1e-7);
  EXPECT_NEAR(m::Promptsrc::agreement(z0, z0).item<double>(), 0.0, 1e-12);
  const auto templates = m::Promptsrc::templates();
  ASSERT_EQ(templates.size(), 60u);
  EXPECT_EQ(templates.front(), "a photo of a {}.");
  EXPECT_EQ(templates[1], "a bad photo of a {}.");
  EXPECT_EQ(templates[40], "the origami {}.");
  EXPECT_EQ(templates.back(), "itap of the {}.");
}

TEST(Promptsrc, LossIsCrossEntropyPlusTheWeightedAgreements) {
  torch::manual_seed(3);
  m::PromptsrcOptions o;
  o.prompt.depth_text = o.prompt.depth_image = 2;
  m::Promptsrc src(o);
  src.setup(task());
  auto b = pixels_batch(4, 7, false);
  auto t = src.learner()->text_features();
  t = t / t.norm(2, -1, true);
  auto f = src.learner()->image_features(b.pixels);
  f = f / f.norm(2, -1, true);
  auto f0 = clip()->encode_image(b.pixels).detach();
  f0 = f0 / f0.norm(2, -1, true);
  const double s = clip()->logit_scale().exp().item<double>();
  auto z = s * f.matmul(t.t()), z0 = s * f0.matmul(src.frozen_text().t());
  const double expected = torch::nn::functional::cross_entropy(z, b.labels).item<double>() +
                          25 * (t - src.frozen_text()).abs().mean().item<double>() +
                          10 * (f - f0).abs().mean().item<double>() + m::Promptsrc::agreement(z, z0).item<double>();
  EXPECT_NEAR(src.loss(b).item<double>(), expected, 1e-5);
  EXPECT_GT((f - f0).abs().mean().item<double>(), 0);  // the image prompts change the features
  // The frozen text reference: the renormalised mean of raw features over the 60 templates.
  auto raw = vlmadapt::template_text_features(clip(), vlmadapt::Tokenizer(), kClasses, m::Promptsrc::templates(), false);
  auto mean = raw.mean(0);
  EXPECT_TRUE(torch::allclose(src.frozen_text(), mean / mean.norm(2, -1, true), 0, 1e-6));
}

}  // namespace
