// ZERO, MTA and C-TPT (TTA_ONLINE.md §5-§7): their arithmetic on small tensors with
// values worked out by hand, and C-TPT against TPT on the tiny model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include <vlmadapt/adapt/tta_episodic.h>
#include <vlmadapt/backbone/checkpoint.h>

#include "methods/ctpt.h"
#include "methods/mta.h"
#include "methods/zero.h"
#include "methods/zeroshot.h"
#include "methods/tpt.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
namespace tta = vlmadapt::tta;
using vlmadapt::ZeroTieBreak;

namespace {

// Logits [V,C] where view i puts margin[i] on class argmax[i] and 0 elsewhere: a larger
// margin is a lower entropy, so the margins set the confidence order.
torch::Tensor peaked(const std::vector<int64_t>& argmax, const std::vector<double>& margin, int64_t classes) {
  auto z = torch::zeros({static_cast<int64_t>(argmax.size()), classes});
  for (size_t i = 0; i < argmax.size(); ++i) z[i][argmax[i]] = margin[i];
  return z;
}

std::vector<float> values(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

// ---- ZERO ------------------------------------------------------------------------

TEST(Zero, PredictsTheVoteOfTheConfidentViewsArgmaxes) {
  // 10 views, keep int(10 * 0.3) = 3: the margins 9, 8, 7 (views 3, 7, 1) vote 2, 2, 1;
  // the 7 other views all say 0 but are less confident and do not vote.
  auto z = peaked({0, 1, 0, 2, 0, 0, 0, 2, 0, 0}, {1, 7, 2, 9, 1, 1, 3, 8, 1, 2}, 4);
  auto vote = tta::zero_vote(z, 0.3);
  EXPECT_EQ(values(vote.votes), (std::vector<float>{0, 1, 2, 0}));
  EXPECT_EQ(vote.prediction, 2);
}

TEST(Zero, TieGoesToTheFirstDiscardedViewWhoseArgmaxIsTied) {
  // Kept (margins 9, 8, 7): classes 1, 2, 3, a three-way tie. Discarded by entropy: margin
  // 6 says 0 (not tied), margin 5 says 3, margin 4 says 2: class 3 wins with one more vote.
  auto z = peaked({1, 2, 3, 0, 3, 2, 0, 0, 0, 0}, {9, 8, 7, 6, 5, 4, 1, 1, 1, 1}, 4);
  auto vote = tta::zero_vote(z, 0.3);
  EXPECT_EQ(vote.prediction, 3);
  EXPECT_EQ(values(vote.votes), (std::vector<float>{0, 1, 1, 2}));
  // The scan is in entropy order, not view order: put the margin-4 view (class 2) first.
  auto swapped = peaked({1, 2, 3, 0, 2, 3, 0, 0, 0, 0}, {9, 8, 7, 6, 4, 5, 1, 1, 1, 1}, 4);
  EXPECT_EQ(tta::zero_vote(swapped, 0.3).prediction, 3);
  // The official code scans views k.. in index order: view 3 says 0, then view 4 says 2.
  EXPECT_EQ(tta::zero_vote(swapped, 0.3, ZeroTieBreak::Official).prediction, 2);
}

TEST(Zero, FallbackIsTheRestrictedArgmaxOfTheFirstDiscardedView) {
  // Kept (rows 0, 1 of 6, keep int(6 * 0.34) = 2): classes 1 and 2 tie. Every discarded
  // view says 0. The first discarded view (row 2) has logits [5, 1, 3, 4]: among {1, 2}, 2.
  auto z = torch::tensor({{0.f, 20.f, 0.f, 0.f},
                          {0.f, 0.f, 19.f, 0.f},
                          {5.f, 1.f, 3.f, 4.f},
                          {1.f, 0.f, 0.f, 0.f},
                          {0.5f, 0.f, 0.f, 0.f},
                          {0.2f, 0.f, 0.f, 0.f}});
  auto vote = tta::zero_vote(z, 0.34);
  EXPECT_EQ(vote.prediction, 2);
  EXPECT_EQ(values(vote.votes), (std::vector<float>{0, 1, 2, 0}));
  // The official fallback masks classes C-1-t = 2 and 1 (the tied ones!) and picks 0.
  EXPECT_EQ(tta::zero_vote(z, 0.34, ZeroTieBreak::Official).prediction, 0);
  EXPECT_EQ(tta::restricted_argmax(z[2], {1, 2}), 2);
  EXPECT_EQ(tta::official_fallback_argmax(z[2], {1, 2}), 0);
  EXPECT_EQ(tta::official_fallback_argmax(z[2], {0}), 0);  // masks class 3: 5 still wins
}

TEST(Zero, ReturnedLogitsAreTheLogVoteShare) {
  auto logits = tta::vote_share_logits(torch::tensor({0.f, 1.f, 3.f, 0.f}));
  auto p = torch::softmax(logits, -1);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(logits.argmax(-1).item<int64_t>(), 2);
  EXPECT_NEAR(p[0][2].item<double>(), 0.75, 1e-6);
  EXPECT_NEAR(p[0][1].item<double>(), 0.25, 1e-6);
  EXPECT_LT(p[0][0].item<double>(), 1e-7);
}

// ---- MTA -------------------------------------------------------------------------

TEST(Mta, BandwidthIsPerPointFromTheNearestOtherPoints) {
  // Points on a line at 0, 1, 3, 6, 10. k = int(0.3 * 4) = 1: nearest distances 1, 1, 2,
  // 3, 4, so sigma^2 = d^2 / 2.
  auto x = torch::tensor({0.f, 1.f, 3.f, 6.f, 10.f}).unsqueeze(1);
  auto s2 = tta::meanshift_bandwidth(x, 0.3).pow(2);
  EXPECT_TRUE(torch::allclose(s2, torch::tensor({0.5f, 0.5f, 2.f, 4.5f, 8.f}), 1e-5, 1e-5)) << s2;
  // k = int(0.5 * 4) = 2: sigma^2 = (d1^2 + d2^2) / 4, e.g. point 6: (9 + 16) / 4.
  s2 = tta::meanshift_bandwidth(x, 0.5).pow(2);
  EXPECT_TRUE(torch::allclose(s2, torch::tensor({2.5f, 1.25f, 3.25f, 6.25f, 16.25f}), 1e-5, 1e-5)) << s2;
}

TEST(Mta, InliernessStepIsTheSoftmaxOfDensityPlusAffinity) {
  // density [1, 0], affinity I, y = [1/2, 1/2], lambda_y = lambda_q = 1:
  // y1 = softmax([1.5, 0.5]) = [e/(e+1), 1/(e+1)]; y2 = softmax([1 + y1_0, y1_1]).
  vlmadapt::MeanShiftOptions o;
  o.lambda_y = 1;
  o.lambda_q = 1;
  auto density = torch::tensor({1.f, 0.f});
  auto y0 = torch::tensor({0.5f, 0.5f});
  const double e = std::exp(1.0), y1 = e / (e + 1);
  auto one = tta::meanshift_inlierness(density, torch::eye(2), y0, o, 1);
  EXPECT_NEAR(one[0].item<double>(), y1, 1e-6);
  const double y2 = 1 / (1 + std::exp(-(1 + y1 - (1 - y1))));
  auto two = tta::meanshift_inlierness(density, torch::eye(2), y0, o, 2);
  EXPECT_NEAR(two[0].item<double>(), y2, 1e-6);
  // lambda_y = 0.5 doubles the logits: softmax([3, 1]) after one step.
  o.lambda_y = 0.5;
  EXPECT_NEAR(tta::meanshift_inlierness(density, torch::eye(2), y0, o, 1)[0].item<double>(),
              1 / (1 + std::exp(-2.0)), 1e-6);
}

TEST(Mta, ModeStepIsTheWeightedMeanRenormalised) {
  // Points (1,0), (0,1), (-1,0), sigma 1, y uniform, mode (1,0): kernel weights 1, e^-1,
  // e^-2; the mean is along (1 - e^-2, e^-1).
  auto x = torch::tensor({{1.f, 0.f}, {0.f, 1.f}, {-1.f, 0.f}});
  auto m = tta::meanshift_mode_step(x, torch::ones({3}), torch::full({3}, 1.f / 3), torch::tensor({1.f, 0.f}));
  auto expect = torch::tensor({static_cast<float>(1 - std::exp(-2.0)), static_cast<float>(std::exp(-1.0))});
  EXPECT_TRUE(torch::allclose(m, expect / expect.norm(), 1e-5, 1e-6)) << m;
  // The mode is a fixed point when it is the weighted mean: points symmetric about it.
  const float c = std::cos(0.4f), s = std::sin(0.4f);
  auto sym = torch::tensor({{1.f, 0.f}, {c, s}, {c, -s}, {c * c - s * s, 2 * s * c}, {c * c - s * s, -2 * s * c}});
  auto sigma = torch::tensor({0.3f, 0.5f, 0.5f, 0.7f, 0.7f});
  auto y = torch::tensor({0.1f, 0.2f, 0.2f, 0.25f, 0.25f});
  auto fixed = tta::meanshift_mode_step(sym, sigma, y, torch::tensor({1.f, 0.f}));
  EXPECT_TRUE(torch::allclose(fixed, torch::tensor({1.f, 0.f}), 1e-6, 1e-6)) << fixed;
  // ... and not from elsewhere: from (c, s) the step moves.
  auto moved = tta::meanshift_mode_step(sym, sigma, y, torch::tensor({c, s}));
  EXPECT_GT((moved - torch::tensor({c, s})).norm().item<double>(), 1e-3);
}

// Unit vectors in the plane at the given angles (radians), as [V,2].
torch::Tensor on_circle(const std::vector<double>& angles) {
  auto x = torch::empty({static_cast<int64_t>(angles.size()), 2});
  for (size_t i = 0; i < angles.size(); ++i) {
    x[i][0] = std::cos(angles[i]);
    x[i][1] = std::sin(angles[i]);
  }
  return x;
}

TEST(Mta, SymmetricViewsKeepTheModeOnTheirAxis) {
  // View 0 on the axis (0 rad), the others in pairs symmetric about it, with symmetric
  // class probabilities (the mirror swaps the two classes, so the affinity is mirrored
  // too): the whole solve (inlierness and mode steps) keeps the mode there,
  // and the inlierness of mirrored views is equal.
  auto x = on_circle({0.0, 0.3, -0.3, 0.1, -0.1, 0.2, -0.2, 0.05, -0.05});
  auto probs = torch::tensor({{0.5f, 0.5f}, {0.9f, 0.1f}, {0.1f, 0.9f}, {0.7f, 0.3f}, {0.3f, 0.7f},
                              {0.8f, 0.2f}, {0.2f, 0.8f}, {0.6f, 0.4f}, {0.4f, 0.6f}});
  auto r = tta::meanshift_mode(x, probs);
  EXPECT_NEAR(r.mode[1].item<double>(), 0.0, 1e-6) << r.mode;
  EXPECT_NEAR(r.mode[0].item<double>(), 1.0, 1e-6) << r.mode;
  EXPECT_NEAR(r.inlierness.sum().item<double>(), 1.0, 1e-5);
  for (int64_t i = 1; i < 9; i += 2)
    EXPECT_NEAR(r.inlierness[i].item<double>(), r.inlierness[i + 1].item<double>(), 1e-6) << i;
}

TEST(Mta, ModeLandsInTheDominantCluster) {
  // 13 views around 0 rad that agree on class 0, 4 around 1.2 rad that agree on class 1,
  // view 0 at the edge of the big cluster (-0.3 rad, class 0; not
  // where the mean of all views points, 0.22 rad). With a wide bandwidth (all
  // other views as neighbours) the affinity makes the big cluster the inliers and the
  // mode walks into it. With the official 30% neighbours the kernels are narrow and the
  // mode stays near view 0: MTA refines the test view's embedding locally.
  auto x = on_circle({-0.3, 0.0, 0.02, -0.02, 0.04, -0.04, 0.06, -0.06, 0.08, -0.08, 0.1, -0.1, 0.12, -0.12,
                      1.2, 1.25, 1.15, 1.3});
  auto probs = torch::zeros({18, 2});
  for (int64_t i = 0; i < 18; ++i) probs[i][i < 14 ? 0 : 1] = 1;
  vlmadapt::MeanShiftOptions wide;
  wide.knn_fraction = 1;
  auto r = tta::meanshift_mode(x, probs, wide);
  auto angle = [](const torch::Tensor& m) { return std::atan2(m[1].item<double>(), m[0].item<double>()); };
  EXPECT_LT(std::abs(angle(r.mode)), 0.03) << angle(r.mode);
  EXPECT_GT(r.inlierness.narrow(0, 0, 14).sum().item<double>(), 0.99) << r.inlierness;
  auto local = tta::meanshift_mode(x, probs);
  EXPECT_NEAR(angle(local.mode), -0.3, 0.01);
}

// ---- C-TPT -----------------------------------------------------------------------

TEST(Ctpt, DispersionOfThreeUnitVectorsByHand) {
  // e1, e2, e3: centroid (1,1,1)/3, each at distance sqrt(6)/3.
  EXPECT_NEAR(tta::text_dispersion(torch::eye(3)).item<double>(), std::sqrt(6.0) / 3, 1e-6);
  // (1,0), (-1,0), (0,1): centroid (0, 1/3); distances sqrt(10)/3, sqrt(10)/3, 2/3.
  auto t = torch::tensor({{1.f, 0.f}, {-1.f, 0.f}, {0.f, 1.f}});
  EXPECT_NEAR(tta::text_dispersion(t).item<double>(), (2 * std::sqrt(10.0) / 3 + 2.0 / 3) / 3, 1e-6);
}

TEST(Ctpt, DispersionGradientPushesTextFeaturesApart) {
  // d ATFD / d t_c = (u_c - mean_j u_j) / C with u_c the unit vector from the centroid;
  // for e1, e2, e3 the mean of the u's is 0, so the gradient of -ATFD on t_1 is -u_1 / 3.
  auto t = torch::eye(3).requires_grad_(true);
  auto loss = -50.0 * tta::text_dispersion(t);
  loss.backward();
  auto u1 = torch::tensor({2.f, -1.f, -1.f}) / std::sqrt(6.0f);
  EXPECT_TRUE(torch::allclose(t.grad()[0], -50.0f / 3 * u1, 1e-5, 1e-5)) << t.grad();
  // A descent step on the loss moves every feature away from the centroid: ATFD grows.
  torch::NoGradGuard no_grad;
  auto stepped = t - 1e-3 * t.grad();
  EXPECT_GT(tta::text_dispersion(stepped).item<double>(), tta::text_dispersion(t).item<double>());
}

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

vlmadapt::TaskContext tiny_task() {
  static vlmadapt::Clip clip = vlmadapt::load_clip(vt::tiny_vit());
  vlmadapt::TaskContext t;
  t.clip = clip;
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}."};
  return t;
}

vlmadapt::Batch tiny_views(vlmadapt::TaskContext task, int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t r = task.clip->image_resolution();
  torch::NoGradGuard no_grad;
  vlmadapt::Batch b;
  b.pixels = torch::randn({n, 3, r, r});
  b.image_features = task.clip->encode_image(b.pixels);
  return b;
}

TEST(ZeroAndMta, OnIdenticalViewsTheyGiveTheZeroShotPrediction) {
  // 8 copies of one test view: every view votes for the zero-shot class (ZERO), and the
  // mode never leaves the view (MTA), so MTA's logits are the zero-shot logits.
  auto task = tiny_task();
  auto one = tiny_views(task, 1, 5);
  vlmadapt::Batch views;
  views.image_features = one.image_features.expand({8, -1}).contiguous();
  vlmadapt::methods::Zeroshot zeroshot({});
  vlmadapt::methods::Zero zero({});
  vlmadapt::methods::Mta mta({});
  zeroshot.setup(task);
  zero.setup(task);
  mta.setup(task);
  auto expected = zeroshot.logits(one);
  auto voted = zero.adapt_and_predict(views);
  // The tiny model's logits are close together: take the argmax of the same 8-row product.
  EXPECT_EQ(voted.argmax(-1).item<int64_t>(), zeroshot.logits(views)[0].argmax().item<int64_t>()) << expected;
  EXPECT_NEAR(torch::softmax(voted, -1).max().item<double>(), 1.0, 1e-6);  // all 2 kept views agree
  auto mode = mta.adapt_and_predict(views);
  EXPECT_TRUE(torch::allclose(mode, expected, 1e-4, 1e-4)) << (mode - expected).abs().max().item<double>();
}

TEST(Ctpt, WithLambdaZeroItIsTptExactly) {
  auto task = tiny_task();
  vlmadapt::methods::CtptOptions co;
  co.lambda = 0;
  vlmadapt::methods::Ctpt ctpt(co);
  vlmadapt::methods::Tpt tpt(vlmadapt::methods::TptOptions{});
  ctpt.setup(task);
  tpt.setup(task);
  for (uint64_t seed : {1, 2}) {
    auto views = tiny_views(task, 20, seed);
    auto a = ctpt.adapt_and_predict(views), b = tpt.adapt_and_predict(views);
    EXPECT_TRUE(torch::equal(a, b)) << (a - b).abs().max().item<double>();
  }
  // With lambda > 0 the tuned prompt, and so the prediction, differs.
  co.lambda = 50;
  vlmadapt::methods::Ctpt calibrated(co);
  calibrated.setup(task);
  auto views = tiny_views(task, 20, 1);
  EXPECT_FALSE(torch::equal(calibrated.adapt_and_predict(views), tpt.adapt_and_predict(views)));
}

TEST(Ctpt, ItsLossRaisesTheDispersionOfTheTunedPrompt) {
  // One step on C-TPT's loss with a large lambda (the dispersion term dominates) and a
  // tiny lr (first order) moves the context so that the class text features spread out.
  auto task = tiny_task();
  vlmadapt::methods::CtptOptions co;
  co.lambda = 1e4;
  vlmadapt::methods::Ctpt ctpt(co);
  ctpt.setup(task);
  vlmadapt::TunedPromptOptions o;
  o.lr = 1e-4;
  vlmadapt::TunedPrompt prompt(o);
  torch::nn::Module owner;
  prompt.setup(owner, task);
  prompt.begin_image();
  auto text = prompt.classifier();
  const double before = tta::text_dispersion(text).item<double>();
  prompt.step(ctpt.calibrated_loss(tiny_views(task, 2, 3).image_features, text));
  torch::NoGradGuard no_grad;
  EXPECT_GT(tta::text_dispersion(prompt.classifier()).item<double>(), before);
}

}  // namespace
