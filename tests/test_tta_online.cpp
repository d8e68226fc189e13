// The online test-time methods (tda, dmn, boostadapter, dpe) and their shared memory
// arithmetic (adapt/tta_cache.h): values worked out by hand on 2-4 classes in 2-3
// dimensions, the per-image behaviour of each method, and a long stream that must leave
// every memory bounded. TTA_ONLINE.md §1-§4.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/adapt/tta.h>
#include <vlmadapt/adapt/tta_cache.h>
#include <vlmadapt/backbone/checkpoint.h>

#include "methods/boostadapter.h"
#include "methods/dmn.h"
#include "methods/dpe.h"
#include "methods/tda.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
namespace tta = vlmadapt::tta;
using vlmadapt::Batch;
using vlmadapt::Method;
using vlmadapt::TaskContext;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

torch::Tensor vec(std::vector<float> v) { return torch::tensor(v); }

// ---- the cache arithmetic by hand --------------------------------------------

TEST(TtaCache, InsertKeepsTheLowestEntropiesSortedAndRejectsTheRest) {
  auto c = tta::empty_cache(2, 3, 2, false, torch::kCPU);
  EXPECT_TRUE(tta::insert_lowest_entropy(c, 0, vec({1, 0}), 0.5));
  EXPECT_TRUE(tta::insert_lowest_entropy(c, 0, vec({0, 1}), 0.2));
  EXPECT_TRUE(tta::insert_lowest_entropy(c, 0, vec({1, 1}), 0.9));
  EXPECT_TRUE(torch::allclose(c.entropies[0], vec({0.2f, 0.5f, 0.9f})));
  EXPECT_TRUE(torch::equal(c.keys[0], torch::tensor({{0.f, 1.f}, {1.f, 0.f}, {1.f, 1.f}})));
  // Full: a lower entropy replaces the largest (0.9); a higher or equal one is rejected.
  EXPECT_TRUE(tta::insert_lowest_entropy(c, 0, vec({2, 2}), 0.7));
  EXPECT_TRUE(torch::allclose(c.entropies[0], vec({0.2f, 0.5f, 0.7f})));
  EXPECT_TRUE(torch::equal(c.keys[0][2], vec({2, 2})));
  EXPECT_FALSE(tta::insert_lowest_entropy(c, 0, vec({3, 3}), 0.8));
  EXPECT_FALSE(tta::insert_lowest_entropy(c, 0, vec({3, 3}), 0.7));
  EXPECT_TRUE(torch::equal(c.keys[0][2], vec({2, 2})));
  // The other class is untouched: still empty.
  EXPECT_TRUE(torch::isinf(c.entropies[1]).all().item<bool>());
  EXPECT_EQ(c.filled().sum().item<int64_t>(), 3);
}

TEST(TtaCache, NegativeEntriesCarryTheirProbabilities) {
  auto c = tta::empty_cache(3, 2, 2, true, torch::kCPU);
  tta::insert_lowest_entropy(c, 1, vec({1, 0}), 0.6, vec({0.1f, 0.6f, 0.3f}));
  tta::insert_lowest_entropy(c, 1, vec({0, 1}), 0.4, vec({0.2f, 0.7f, 0.1f}));
  EXPECT_TRUE(torch::allclose(c.probs[1][0], vec({0.2f, 0.7f, 0.1f})));  // sorted with its entry
  EXPECT_TRUE(torch::allclose(c.probs[1][1], vec({0.1f, 0.6f, 0.3f})));
}

TEST(TtaCache, FifoDropsTheOldestWhateverTheEntropy) {
  auto c = tta::empty_cache(2, 2, 2, true, torch::kCPU);
  tta::insert_fifo(c, 0, vec({1, 0}), 0.1, vec({1, 0}));
  tta::insert_fifo(c, 0, vec({0, 1}), 0.9, vec({0, 1}));
  tta::insert_fifo(c, 0, vec({1, 1}), 0.5, vec({0.5f, 0.5f}));  // the lowest entropy (0.1) leaves: it is the oldest
  EXPECT_TRUE(torch::allclose(c.entropies[0], vec({0.9f, 0.5f})));
  EXPECT_TRUE(torch::equal(c.keys[0], torch::tensor({{0.f, 1.f}, {1.f, 1.f}})));
  EXPECT_TRUE(torch::allclose(c.probs[0], torch::tensor({{0.f, 1.f}, {0.5f, 0.5f}})));
  EXPECT_TRUE(torch::isinf(c.entropies[1]).all().item<bool>());
}

TEST(TtaCache, NegativeMaskIsStrictOnBothSides) {
  auto m = tta::negative_mask(vec({0.03f, 0.031f, 0.5f, 1.0f, 0.0f}), 0.03, 1.0);
  EXPECT_TRUE(torch::equal(m, vec({0, 1, 1, 0, 0})));
}

TEST(TtaCache, KernelLogitsByHandAndEmptySlotsCountForNothing) {
  // 3 classes, 2 dims, query (0.6, 0.8).
  auto q = vec({0.6f, 0.8f});
  auto pos = tta::empty_cache(3, 2, 2, false, torch::kCPU);
  tta::insert_lowest_entropy(pos, 0, vec({1, 0}), 0.1);  // affinity 0.6
  tta::insert_lowest_entropy(pos, 2, vec({0, 1}), 0.1);  // 0.8
  tta::insert_lowest_entropy(pos, 2, vec({1, 0}), 0.2);  // 0.6
  pos.keys[1][0].copy_(vec({0.6f, 0.8f}));              // junk in an empty slot (entropy +inf)
  auto a = tta::positive_cache_logits(q, pos, 2.0, 5.0);
  const double e2 = std::exp(-5.0 * 0.4), e1 = std::exp(-5.0 * 0.2);
  EXPECT_TRUE(torch::allclose(a, torch::tensor({2 * e2, 0.0, 2 * (e1 + e2)}).to(torch::kFloat), 1e-5, 1e-6)) << a;

  auto neg = tta::empty_cache(3, 2, 2, true, torch::kCPU);
  tta::insert_lowest_entropy(neg, 1, vec({0, 1}), 0.3, vec({0.02f, 0.5f, 0.48f}));  // mask (0, 1, 1)
  neg.keys[0][1].copy_(q);  // junk in an empty slot
  neg.probs[0][1].fill_(0.5);
  auto n = tta::negative_cache_logits(q, neg, 0.117, 1.0, 0.03, 1.0);
  const double w = 0.117 * std::exp(-1.0 * 0.2);
  EXPECT_TRUE(torch::allclose(n, torch::tensor({0.0, w, w}).to(torch::kFloat), 1e-5, 1e-7)) << n;
}

TEST(TtaCache, TdaEntropyScaleAndBand) {
  // Nats over log2(C): with 4 classes the divisor is 2, and a uniform prediction (ln 4)
  // reaches only ln 2.
  EXPECT_DOUBLE_EQ(tta::tda_normalised_entropy(0.5, 4), 0.25);
  EXPECT_NEAR(tta::tda_normalised_entropy(std::log(4.0), 4), std::log(2.0), 1e-12);
  EXPECT_FALSE(tta::in_entropy_band(0.2, 0.2, 0.5));
  EXPECT_TRUE(tta::in_entropy_band(0.2001, 0.2, 0.5));
  EXPECT_TRUE(tta::in_entropy_band(0.4999, 0.2, 0.5));
  EXPECT_FALSE(tta::in_entropy_band(0.5, 0.2, 0.5));
}

TEST(TtaCache, MultiViewSummaryIsTheUnnormalisedMeanOfTheConfidentViews) {
  // 4 views, 3 classes; selection 0.5 keeps the 2 of lowest entropy (views 1 and 3).
  auto logits = torch::tensor({{0.f, 0.f, 0.f}, {5.f, 0.f, 0.f}, {1.f, 1.f, 0.f}, {0.f, 4.f, 0.f}});
  auto features = torch::tensor({{1.f, 0.f}, {0.f, 1.f}, {1.f, 0.f}, {0.6f, 0.8f}});
  auto s = tta::summarize_views(features, logits, 0.5);
  EXPECT_TRUE(torch::allclose(s.feature, vec({0.3f, 0.9f})));  // not renormalised
  EXPECT_TRUE(torch::allclose(s.logits, vec({2.5f, 2.f, 0.f})));
  auto kept = torch::stack({logits[1], logits[3]});
  EXPECT_TRUE(torch::allclose(s.probs, torch::softmax(kept, -1).mean(0)));
  EXPECT_NEAR(s.entropy, tta::marginal_entropy(kept).item<double>(), 1e-6);
  EXPECT_EQ(s.label, 0);
  // One view: that view, its own entropy.
  auto one = tta::summarize_views(features.narrow(0, 2, 1), logits.narrow(0, 2, 1), 0.1);
  EXPECT_TRUE(torch::equal(one.feature, vec({1, 0})));
  const double e = std::exp(1.0);  // softmax (e, e, 1) / (2e + 1)
  EXPECT_NEAR(one.entropy, std::log(2 * e + 1) - 2 * e / (2 * e + 1), 1e-6);
}

TEST(TtaCache, BoostingViewsAndTheWidenedCopy) {
  EXPECT_EQ(tta::boosting_views(torch::randn({1, 5}), 0.1).size(0), 0);  // one view: no boosting
  EXPECT_EQ(tta::boosting_views(torch::randn({64, 5}), 0.1).size(0), 6);
  auto logits = torch::tensor({{0.f, 0.f}, {9.f, 0.f}, {0.f, 3.f}});
  EXPECT_TRUE(torch::equal(tta::boosting_views(logits, 0.7), torch::tensor({1, 2}, torch::kLong)));
  auto c = tta::empty_cache(2, 1, 2, false, torch::kCPU);
  tta::insert_lowest_entropy(c, 0, vec({1, 0}), 0.5);
  auto wide = tta::widened_copy(c, 2);
  EXPECT_EQ(wide.capacity(), 3);
  tta::insert_lowest_entropy(wide, 0, vec({0, 1}), 0.9);  // fits in an extra slot
  tta::insert_lowest_entropy(wide, 1, vec({0, 1}), 0.1);
  EXPECT_EQ(wide.filled().sum().item<int64_t>(), 3);
  EXPECT_EQ(c.filled().sum().item<int64_t>(), 1);  // the original is untouched
  EXPECT_TRUE(torch::equal(c.keys[0][0], vec({1, 0})));
}

// ---- DMN's memory by hand ----------------------------------------------------

TEST(DmnMemory, WriteFillsSlotsThenReplacesTheLargestEntropy) {
  auto keys = torch::zeros({2, 3, 2});
  auto h = torch::full({2, 3}, kInf);
  auto counts = torch::zeros({2}, torch::kLong);
  EXPECT_EQ(tta::memory_write(keys, h, counts, 0, vec({1, 0}), 0.5), 0);
  EXPECT_EQ(tta::memory_write(keys, h, counts, 0, vec({0, 1}), 0.9), 1);
  EXPECT_EQ(tta::memory_write(keys, h, counts, 0, vec({1, 1}), 0.3), 2);  // filled in order, not by entropy
  EXPECT_EQ(counts[0].item<int64_t>(), 3);
  EXPECT_EQ(tta::memory_write(keys, h, counts, 0, vec({2, 2}), 0.6), 1);  // over the 0.9 slot
  EXPECT_TRUE(torch::equal(keys[0][1], vec({2, 2})));
  EXPECT_TRUE(torch::allclose(h[0], vec({0.5f, 0.6f, 0.3f})));
  EXPECT_EQ(tta::memory_write(keys, h, counts, 0, vec({3, 3}), 0.65), -1);  // above every stored one
  EXPECT_EQ(counts[0].item<int64_t>(), 3);
  EXPECT_EQ(counts[1].item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(tta::memory_filled(counts, 3), torch::tensor({{true, true, true}, {false, false, false}})));
}

TEST(DmnMemory, ReadoutByHandAndAnEmptyClassGivesItsZeroShotLogit) {
  // Query (1, 0); text prototypes t0 = (0.6, 0.8), t1 = (0.8, -0.6); class 0 remembers
  // (1, 0), class 1 nothing (junk in its unfilled slot). beta 5.5, scale 10.
  auto q = vec({1, 0});
  auto keys = torch::tensor({{{1.f, 0.f}, {0.6f, 0.8f}}, {{0.f, 1.f}, {0.8f, -0.6f}}});  // [slot, text slot]
  auto filled = torch::tensor({{true, true}, {false, true}});
  auto l = tta::memory_readout(q, keys, filled, 5.5, 10.0);
  const double w = std::exp(-5.5 * 0.4);
  const double vx = 1 + 0.6 * w, vy = 0.8 * w;
  EXPECT_NEAR(l[0].item<double>(), 10 * vx / std::hypot(vx, vy), 1e-5);
  EXPECT_NEAR(l[1].item<double>(), 10 * 0.8, 1e-5);  // = scale * t1 . q, the zero-shot logit
  // Key sets add before normalising: memory and text slot separately give the same.
  auto sum = tta::kernel_value_sum(q, keys.narrow(1, 0, 1), filled.narrow(1, 0, 1), 5.5) +
             tta::kernel_value_sum(q, keys.narrow(1, 1, 1), filled.narrow(1, 1, 1), 5.5);
  EXPECT_TRUE(torch::allclose(tta::readout_logits(q, sum, 10.0), l));
}

TEST(DmnMemory, PseudoLabelFromTheConfidentViews) {
  // 4 views, 3 classes, selection 0.5: views 1 and 3 are the most confident.
  auto logits = torch::tensor({{0.f, 0.f, 0.f}, {0.f, 6.f, 0.f}, {1.f, 0.f, 0.f}, {3.f, 4.f, 0.f}});
  auto pl = tta::dmn_pseudo_label(logits, 0.5);
  auto mean = (torch::softmax(logits[1], -1) + torch::softmax(logits[3], -1)) / 2;
  EXPECT_EQ(pl.label, 1);
  EXPECT_NEAR(pl.entropy, -(mean * torch::log(mean + 1e-8)).sum().item<double>(), 1e-6);
}

// ---- DPE by hand ---------------------------------------------------------------

TEST(DpeArithmetic, FirstAdamWStepFromZeroIsSignLike) {
  auto g = vec({0.5f, -2e-3f, 0.f});
  auto step = tta::adamw_first_step(torch::zeros({3}), g, 0.1, 1e-3, 0.1);
  EXPECT_TRUE(torch::allclose(step, vec({float(-0.1 * 0.5 / 0.501), float(0.1 * 0.002 / 0.003), 0.f}), 1e-6, 1e-8));
  // The same as a fresh torch AdamW's first step, weight decay included, from any start.
  auto p = torch::tensor({0.3f, -0.2f, 0.1f}).requires_grad_(true);
  torch::optim::AdamW opt({p}, torch::optim::AdamWOptions(0.1).eps(1e-3).weight_decay(0.1));
  p.mutable_grad() = g.clone();
  auto expected = tta::adamw_first_step(p.detach().clone(), g, 0.1, 1e-3, 0.1);
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), expected, 1e-5, 1e-7)) << p << expected;
}

TEST(DpeArithmetic, PrototypeEvolutionIsARunningMean) {
  auto global = torch::tensor({{1.f, 0.f}});
  auto count = torch::zeros({1}, torch::kLong);
  tta::evolve_prototypes(global, count, torch::tensor({{0.f, 1.f}}));
  EXPECT_TRUE(torch::allclose(global, torch::tensor({{0.5f, 0.5f}})));
  tta::evolve_prototypes(global, count, torch::tensor({{0.f, 1.f}}));
  EXPECT_TRUE(torch::allclose(global, torch::tensor({{1.f / 3, 2.f / 3}})));  // mean of (1,0), (0,1), (0,1)
  EXPECT_EQ(count.item<int64_t>(), 2);
}

TEST(DpeArithmetic, ClassMeansAndPairedInfoNce) {
  auto c = tta::empty_cache(3, 2, 2, false, torch::kCPU);
  tta::insert_lowest_entropy(c, 2, vec({1, 0}), 0.1);
  tta::insert_lowest_entropy(c, 2, vec({0, 1}), 0.2);
  tta::insert_lowest_entropy(c, 0, vec({0, 2}), 0.3);
  c.keys[1][0].fill_(7);  // junk in an empty slot
  auto [present, means] = tta::cache_class_means(c);
  EXPECT_TRUE(torch::equal(present, torch::tensor({0, 2}, torch::kLong)));
  EXPECT_TRUE(torch::allclose(means, torch::tensor({{0.f, 2.f}, {0.5f, 0.5f}})));
  // Orthonormal pairs, temperature 1: each row's CE is log(1 + e^-1).
  auto eye = torch::eye(2);
  EXPECT_NEAR(tta::paired_info_nce(eye, 3 * eye, 1.0).item<double>(), std::log(1 + std::exp(-1.0)), 1e-6);
}

// ---- the methods on the tiny model ------------------------------------------------

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
const int64_t kC = 10;

vlmadapt::Clip& tiny_clip() {
  static vlmadapt::Clip clip = vlmadapt::load_clip(vt::tiny_vit());
  return clip;
}

TaskContext tiny_task() {
  TaskContext t;
  t.clip = tiny_clip();
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}."};
  return t;
}

torch::Tensor text_prototypes() {
  return vlmadapt::class_text_features(tiny_clip(), vlmadapt::Tokenizer(), kClasses, {"a photo of a {}."});
}
double logit_scale() { return tiny_clip()->logit_scale().exp().item<double>(); }

// Image features [V,E] near a random class's text prototype, at a random distance, so that
// the predictions cover the classes and a range of entropies.
torch::Tensor stream_views(const torch::Tensor& text, int64_t views) {
  const int64_t c = torch::randint(kC, {1}).item<int64_t>();
  const double noise = torch::rand({1}).item<double>() * 0.3;
  return text[c].unsqueeze(0) + noise * torch::randn({views, text.size(1)});
}

std::shared_ptr<Method> online(const std::string& name, const std::map<std::string, std::string>& values = {}) {
  auto m = vlmadapt::make_method(name, values);
  m->setup(tiny_task());
  if (m->contract().fits) m->fit({}, {});
  return m;
}

Batch views_batch(const torch::Tensor& features) {
  Batch b;
  b.image_features = features;
  return b;
}

TEST(TdaMethod, UpdatesBeforePredictingAndGatesTheNegativeCacheByEntropy) {
  torch::manual_seed(0);
  auto text = text_prototypes();
  int in_band = 0, out_of_band = 0;
  for (int i = 0; i < 60; ++i) {
    vlmadapt::methods::Tda tda(vlmadapt::methods::TdaOptions{});
    tda.setup(tiny_task());
    auto f = stream_views(text, 1);
    auto fn = f / f.norm(2, -1, true);
    auto z = logit_scale() * torch::matmul(fn, text.t());
    auto probs = torch::softmax(z[0], -1);
    const int64_t y = z[0].argmax().item<int64_t>();
    const double h = tta::tda_normalised_entropy(tta::entropy(z)[0].item<double>(), kC);
    const bool band = h > 0.2 && h < 0.5;
    (band ? in_band : out_of_band)++;
    auto out = tda.adapt_and_predict(views_batch(f))[0];
    EXPECT_EQ(tda.negative_cache().filled().sum().item<int64_t>(), band ? 1 : 0) << h;
    // The image retrieves itself: kernel 1 under its pseudo-class, alpha = 2; the negative
    // cache (when it was admitted) penalises its masked classes by neg_alpha = 0.117.
    auto expected = z[0].clone();
    expected[y] += 2.0;
    if (band) expected -= 0.117 * tta::negative_mask(probs, 0.03, 1.0);
    EXPECT_TRUE(torch::allclose(out, expected, 1e-4, 1e-4)) << out << expected;
  }
  EXPECT_GT(in_band, 0);  // both branches were exercised
  EXPECT_GT(out_of_band, 0);
}

TEST(DmnMethod, WithoutMemoryWeightItIsZeroShotAndTheImageEntersMemory) {
  torch::manual_seed(1);
  auto text = text_prototypes();
  auto m = online("dmn", {{"dmn.gamma", "0"}});
  auto f = stream_views(text, 8);
  auto out = m->adapt_and_predict(views_batch(f));
  auto f0 = f[0] / f[0].norm();
  // 1e-4: logits are 100 x a float cosine, so rounding alone reaches 1e-5 (the sanitized
  // -O1 build of scripts/sanitize.sh differs from this by 3.3e-5).
  EXPECT_TRUE(torch::allclose(out[0], torch::log_softmax(logit_scale() * torch::matmul(text, f0), -1), 1e-4, 1e-4));
  auto state = m->state();
  EXPECT_EQ(state.at("memory_counts").sum().item<int64_t>(), 1);
  const int64_t y = state.at("memory_counts").argmax().item<int64_t>();
  EXPECT_TRUE(torch::allclose(state.at("memory_keys")[y][0], f0, 1e-6, 1e-6));  // view 0, not the confident views
}

TEST(DmnMethod, FewShotFeaturesFormTheStaticMemory) {
  torch::manual_seed(2);
  auto text = text_prototypes();
  auto train = torch::randn({5, text.size(1)});
  auto labels = torch::tensor({0, 3, 3, 0, 3}, torch::kLong);
  auto zero_shot = online("dmn", {{"dmn.static_memory", "off"}});  // DMN-ZS: fit() keeps nothing
  zero_shot->fit({train, labels}, {});
  EXPECT_EQ(zero_shot->state().at("static_keys").size(1), 0);
  // auto: the static memory when the recipe gives a few-shot split, never for 0 shots
  // (the whole train split).
  for (int shots : {0, 4}) {
    auto t = tiny_task();
    t.shots = shots;
    auto a = vlmadapt::make_method("dmn");
    a->setup(t);
    a->fit({train, labels}, {});
    EXPECT_EQ(a->state().at("static_keys").size(1), shots ? 3 : 0) << shots;
  }
  auto m = vlmadapt::make_method("dmn", {{"dmn.static_memory", "on"}});
  m->setup(tiny_task());
  m->fit({train, labels}, {});
  auto state = m->state();
  EXPECT_EQ(state.at("static_keys").sizes(), (std::vector<int64_t>{kC, 3, text.size(1)}));
  EXPECT_TRUE(torch::equal(state.at("static_counts"), torch::tensor({2, 0, 0, 3, 0, 0, 0, 0, 0, 0}, torch::kLong)));
  EXPECT_TRUE(torch::allclose(state.at("static_keys")[3][1], train[2] / train[2].norm()));
  // The static term changes the prediction against the same method without shots.
  auto f = stream_views(text, 4);
  EXPECT_FALSE(torch::allclose(m->adapt_and_predict(views_batch(f)), online("dmn")->adapt_and_predict(views_batch(f))));
}

TEST(DpeMethod, TextPrototypesEvolveOnlyOnConfidentPredictions) {
  torch::manual_seed(3);
  auto text = text_prototypes();
  // A threshold inside the range of this tiny model's entropies, so that both happen.
  auto m = online("dpe", {{"dpe.evolve_threshold", "0.3"}});
  int accepted = 0, rejected = 0;
  for (int i = 0; i < 40; ++i) {
    auto before = m->state();
    auto out = m->adapt_and_predict(views_batch(stream_views(text, 1)));
    auto after = m->state();
    const double h = tta::entropy(out)[0].item<double>() / std::log2(double(kC));
    const bool accept = h < 0.3;
    (accept ? accepted : rejected)++;
    EXPECT_EQ(after.at("text_count").item<int64_t>(), before.at("text_count").item<int64_t>() + (accept ? 1 : 0));
    EXPECT_EQ(torch::equal(after.at("text_global"), before.at("text_global")), !accept) << h;
  }
  EXPECT_GT(accepted, 0);
  EXPECT_GT(rejected, 0);
}

TEST(DpeMethod, TheResidualStepMovesThePrediction) {
  // With zero learning rates DPE is zero-shot plus its cache: a fresh cache holds the image
  // itself, kernel 1, alpha 6 under its pseudo-class.
  torch::manual_seed(4);
  auto text = text_prototypes();
  auto first = stream_views(text, 1), second = stream_views(text, 1);
  auto frozen = online("dpe", {{"dpe.lr_text", "0"}, {"dpe.lr_image", "0"}});
  auto still = frozen->adapt_and_predict(views_batch(first));
  auto fn = first[0] / first[0].norm();
  auto z = logit_scale() * torch::matmul(text, fn);
  auto expected = z.clone();
  expected[z.argmax().item<int64_t>()] += 6.0;
  EXPECT_TRUE(torch::allclose(still[0], expected, 1e-4, 1e-4)) << still << expected;
  // With the official rates, once the cache holds two classes (so that the alignment loss
  // has a gradient), the one-step residuals change the logits.
  auto stepped = online("dpe");
  stepped->adapt_and_predict(views_batch(first));
  auto moved = stepped->adapt_and_predict(views_batch(second));
  still = frozen->adapt_and_predict(views_batch(second));
  EXPECT_GT((moved - still).abs().max().item<double>(), 1e-4) << moved << still;
}

TEST(BoostAdapterMethod, BoostingSamplesNeverEnterTheState) {
  torch::manual_seed(5);
  auto text = text_prototypes();
  auto m = online("boostadapter");
  auto f = stream_views(text, 20);  // 2 boosting samples
  m->adapt_and_predict(views_batch(f));
  auto state = m->state();
  EXPECT_EQ(torch::isfinite(state.at("pos_entropies")).sum().item<int64_t>(), 1);  // the historical view 0 only
  EXPECT_TRUE(torch::allclose(state.at("pos_keys").sum(1).sum(0), f[0] / f[0].norm(), 1e-6, 1e-6));
  // Without boosting samples the prediction differs.
  auto plain = online("boostadapter", {{"boostadapter.boost_selection", "0"}});
  EXPECT_FALSE(torch::allclose(plain->adapt_and_predict(views_batch(f)), online("boostadapter")->adapt_and_predict(views_batch(f))));
}

// 5,000 images through each method: the state keeps its shapes, the memories their
// bounds, and it holds something (so that the bounds were tested).
TEST(OnlineMethods, ALongStreamKeepsTheStateBounded) {
  auto text = text_prototypes();
  const std::map<std::string, int64_t> views = {{"tda", 1}, {"dpe", 1}, {"dmn", 4}, {"boostadapter", 10}};
  for (const auto& [name, v] : views) {
    torch::manual_seed(6);
    auto m = online(name);
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& [k, t] : m->state()) shapes[k] = t.sizes().vec();
    for (int i = 0; i < 5000; ++i) {
      if (i == 2500) m->on_stream_begin();  // a continuing stream keeps its state
      auto out = m->adapt_and_predict(views_batch(stream_views(text, v)));
      ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, kC})) << name;
      ASSERT_TRUE(torch::isfinite(out).all().item<bool>()) << name << " image " << i;
    }
    auto state = m->state();
    for (const auto& [k, t] : state) EXPECT_EQ(t.sizes().vec(), shapes.at(k)) << name << " " << k;
    for (const auto& [k, t] : state) {
      if (k.find("entropies") == std::string::npos) continue;
      auto filled = torch::isfinite(t);
      // Something was stored (the negative caches, gated by entropy, hold fewer entries).
      EXPECT_GT(filled.sum().item<int64_t>(), k == "neg_entropies" ? 1 : kC) << name << " " << k;
      const bool fifo = name == "boostadapter" && k == "neg_entropies";
      if (name != "dmn" && !fifo)  // lowest-entropy caches stay sorted, filled slots first
        EXPECT_TRUE((t.narrow(1, 1, t.size(1) - 1) >= t.narrow(1, 0, t.size(1) - 1)).all().item<bool>()) << name << " " << k;
    }
    if (name == "dmn") {
      EXPECT_LE(state.at("memory_counts").max().item<int64_t>(), 50);
      EXPECT_TRUE(torch::equal(torch::isfinite(state.at("memory_entropies")).sum(1), state.at("memory_counts")));
    }
    if (name == "dpe") EXPECT_GT(state.at("text_count").item<int64_t>(), 0) << "the text prototypes evolved";
  }
}

}  // namespace
