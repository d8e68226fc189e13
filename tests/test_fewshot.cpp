// The training-free few-shot adapters (tip_adapter, tip_adapter_f, gda, lp_pp, clap, zpe)
// and their shared arithmetic (adapt/fewshot.h): values worked out by hand on 2-4 points
// in 2 dimensions, the mechanics of each method on the tiny fixture model, the support
// set a run builds (fit_data), and that no selection ever sees test labels.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include <vlmadapt/adapt/fewshot.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/engine/recipe.h>
#include <vlmadapt/engine/run_context.h>

#include "methods/clap.h"
#include "methods/gda.h"
#include "methods/lp_pp.h"
#include "methods/tip_adapter.h"
#include "methods/tip_adapter_f.h"
#include "methods/zpe.h"
#include "bench/bench.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace fewshot = vlmadapt::fewshot;
namespace vt = vlmadapt::testing;
using vlmadapt::Batch;
using vlmadapt::FeatureSet;
using vlmadapt::FitData;
using vlmadapt::Method;
using vlmadapt::TaskContext;

namespace {

torch::Tensor mat(std::vector<std::vector<float>> rows) {
  std::vector<torch::Tensor> t;
  for (auto& r : rows) t.push_back(torch::tensor(r));
  return torch::stack(t);
}

// ---- arithmetic by hand --------------------------------------------------------

TEST(Fewshot, TipCacheLogitsAreTheKernelSummedPerClass) {
  // affinity [[1, 0.5], [0, 1]], keys of classes 0 and 1, beta 2:
  // row 0: [e^0, e^-1]; row 1: [e^-2, e^0].
  auto logits = fewshot::tip_cache_logits(mat({{1, 0.5}, {0, 1}}), torch::tensor({0, 1}), 2, 2.0);
  EXPECT_TRUE(torch::allclose(logits, mat({{1, std::exp(-1.f)}, {std::exp(-2.f), 1}})));
  // Two keys of one class add up; a class without keys gets 0.
  auto summed = fewshot::tip_cache_logits(mat({{1, 1}}), torch::tensor({1, 1}), 3, 5.0);
  EXPECT_TRUE(torch::allclose(summed, mat({{0, 2, 0}})));
}

TEST(Fewshot, TipSearchTakesTheFirstStrictMaximumBetaOuterAlphaInner) {
  // Zero-shot says class 0 for both images; only the cache can make image 1 right.
  auto zero_shot = mat({{1, 0}, {1, 0}});
  auto affinity = mat({{1, 0}, {0, 1}});  // image i is key i; key 0 is class 0, key 1 class 1
  auto labels = torch::tensor({0, 1});
  auto choice = fewshot::tip_search(zero_shot, affinity, torch::tensor({0, 1}), labels, {0.5, 1.5, 3}, {1, 2});
  // beta 1, alpha 0.5: image 1 scores [1 + 0.5 e^-1, 0.5] -> wrong; alpha 1.5: [1 + 1.5 e^-1, 1.5] = [1.55, 1.5] -> wrong;
  // alpha 3: [1 + 3 e^-1, 3] = [2.10, 3] -> right, image 0 [1 + 3, 3 e^-1] right: the first 100%.
  EXPECT_DOUBLE_EQ(choice.beta, 1);
  EXPECT_DOUBLE_EQ(choice.alpha, 3);
  EXPECT_DOUBLE_EQ(choice.accuracy, 1);
  auto grid = fewshot::tip_grid(0.1, 7, 200);
  EXPECT_EQ(grid.size(), 200u);
  EXPECT_DOUBLE_EQ(grid[0], 0.1);
  EXPECT_NEAR(grid[199], 0.1 + 199 * 6.9 / 200, 1e-12);  // 7 itself is not in the grid
}

// The search groups keys by class and scores each row on its candidate classes only; it
// must choose exactly what the plain double loop over the whole rows chooses.
TEST(Fewshot, TipSearchEqualsTheBruteForceLoopWithUnequalClassesAndManyClasses) {
  torch::manual_seed(3);
  const int64_t classes = 60, keys = 200, rows = 150;
  auto values = torch::randint(classes, {keys}, torch::kLong);  // unequal counts, some classes empty
  auto affinity = torch::rand({rows, keys}) * 2 - 1;
  auto zero_shot = torch::randn({rows, classes}) * 3;
  auto labels = torch::randint(classes, {rows}, torch::kLong);
  const auto alphas = fewshot::tip_grid(0.1, 5, 20), betas = fewshot::tip_grid(0.1, 7, 30);
  fewshot::TipChoice brute;
  for (double beta : betas) {
    auto cache = fewshot::tip_cache_logits(affinity, values, classes, beta);
    for (double alpha : alphas) {
      const double acc = fewshot::accuracy(zero_shot + alpha * cache, labels);
      if (acc > brute.accuracy) brute = {alpha, beta, acc};
    }
  }
  auto fast = fewshot::tip_search(zero_shot, affinity, values, labels, alphas, betas);
  EXPECT_EQ(fast.alpha, brute.alpha);
  EXPECT_EQ(fast.beta, brute.beta);
  EXPECT_NEAR(fast.accuracy, brute.accuracy, 1e-12);
  EXPECT_GT(brute.accuracy, fewshot::accuracy(zero_shot, labels));  // the cache matters here
}

TEST(Fewshot, GdaClassMeansSharedCovarianceAndShrinkageByHand) {
  // Class 0 at (1,0), (3,0); class 1 at (0,1), (0,3): means (2,0), (0,2); the class-centred
  // rows (+-1, 0), (0, +-1) give S = diag(2, 2) / 3 (unbiased, N = 4).
  auto x = mat({{1, 0}, {3, 0}, {0, 1}, {0, 3}});
  auto y = torch::tensor({0, 0, 1, 1});
  EXPECT_TRUE(torch::allclose(fewshot::class_means(x, y, 2), mat({{2, 0}, {0, 2}})));
  // KS: Lambda = D pinv((N-1) S + tr(S) I) = 2 / (2 + 4/3) I = 0.6 I.
  auto ks = fewshot::gda_fit(x, y, 2, fewshot::Shrinkage::Ks);
  EXPECT_TRUE(torch::allclose(ks.weight, mat({{1.2f, 0}, {0, 1.2f}})));
  const float b_ks = std::log(0.5f) - 0.5f * 2.4f;
  EXPECT_TRUE(torch::allclose(ks.bias, torch::tensor({b_ks, b_ks})));
  // No shrinkage: Lambda = S^-1 = 1.5 I.
  auto plain = fewshot::gda_fit(x, y, 2, fewshot::Shrinkage::None);
  EXPECT_TRUE(torch::allclose(plain.weight, mat({{3, 0}, {0, 3}})));
  const float b_plain = std::log(0.5f) - 0.5f * 6.f;
  EXPECT_TRUE(torch::allclose(plain.bias, torch::tensor({b_plain, b_plain})));
  // Three points in two classes span one direction: singular without shrinkage.
  auto few = mat({{1, 0}, {3, 0}, {0, 1}});
  auto error = vt::error_of([&] { fewshot::gda_fit(few, torch::tensor({0, 0, 1}), 2, fewshot::Shrinkage::None); });
  EXPECT_NE(error.find("singular"), std::string::npos) << error;
  EXPECT_NE(error.find("gda.shrinkage"), std::string::npos) << error;
  EXPECT_NO_THROW(fewshot::gda_fit(few, torch::tensor({0, 0, 1}), 2, fewshot::Shrinkage::Ks));
}

TEST(Fewshot, ZpeScoresWithAndWithoutTheTestMeanCorrection) {
  // Prompt 0: classes at (1,0), (0,1); prompt 1: at (0.6,0.8), (0.8,0.6). Images (1,0), (0,1).
  auto text = torch::stack({mat({{1, 0}, {0, 1}}), mat({{0.6f, 0.8f}, {0.8f, 0.6f}})});
  auto images = mat({{1, 0}, {0, 1}});
  // Max logit: prompt 0 (1 + 1) / 2 = 1, prompt 1 (0.8 + 0.8) / 2 = 0.8.
  auto none = fewshot::zpe_scores(text, images, {}, 1.0, fewshot::ZpeDebias::None);
  EXPECT_TRUE(torch::allclose(none, torch::tensor({1.f, 0.8f})));
  // Test mean per (prompt, class): 0.5 and 0.7 everywhere: scores 0.5 and 0.1.
  auto test = fewshot::zpe_scores(text, images, {}, 1.0, fewshot::ZpeDebias::Test);
  EXPECT_TRUE(torch::allclose(test, torch::tensor({0.5f, 0.1f})));
  // Both: half of the test mean and of the pretraining mean ((0,1) only: 0/1 and 0.8/0.6).
  auto both = fewshot::zpe_scores(text, images, mat({{0, 1}}), 1.0, fewshot::ZpeDebias::Both);
  // prompt 0: corrections [0.25, 0.75]: max(1-0.25, 0-0.75)=0.75, max(-0.25, 0.25)=0.25 -> 0.5
  // prompt 1: corrections [0.75, 0.65]: max(-0.15, 0.15)=0.15, max(0.05, -0.05)=0.05 -> 0.1
  EXPECT_TRUE(torch::allclose(both, torch::tensor({0.5f, 0.1f})));
  EXPECT_NE(vt::error_of([&] { fewshot::zpe_scores(text, images, {}, 1.0, fewshot::ZpeDebias::Both); }).find("pretrain_images"),
            std::string::npos);
}

TEST(Fewshot, ZpeMadSelectionAndSoftmaxWeights) {
  auto scores = torch::tensor({1.f, 2.f, 3.f, 10.f});
  // median 2.5; |x - 2.5| = 1.5, 0.5, 0.5, 7.5 -> MAD = (0.5 + 1.5) / 2 = 1 (numpy's even median).
  EXPECT_DOUBLE_EQ(fewshot::median_abs_deviation(scores), 1.0);
  // z = -1.5, -0.5, 0.5, 7.5.
  EXPECT_TRUE(torch::equal(fewshot::zpe_select(scores, 2.0), torch::tensor({false, false, false, true})));
  EXPECT_TRUE(torch::equal(fewshot::zpe_select(scores, 0.4), torch::tensor({false, false, true, true})));
  EXPECT_TRUE(fewshot::zpe_select(scores, 0).all().item<bool>());  // tau 0: no selection
  EXPECT_TRUE(torch::equal(fewshot::zpe_select(scores, 100), torch::tensor({false, false, false, true})));  // none: the best
  auto w = fewshot::zpe_weights(scores, fewshot::zpe_select(scores, 0.4));
  const double e = std::exp(-7.0);  // softmax over {3, 10}
  EXPECT_TRUE(torch::allclose(w, torch::tensor({0.f, 0.f, float(e / (1 + e)), float(1 / (1 + e))})));
  auto text = torch::stack({mat({{1, 0}}), mat({{0, 1}})});
  EXPECT_TRUE(torch::allclose(fewshot::weighted_classifier(text, torch::tensor({0.25f, 0.75f})), mat({{0.25f, 0.75f}})));
}

// ---- the methods on the tiny fixture model ---------------------------------------

const std::vector<std::string> kClasses = {"cat", "dog", "car"};

vlmadapt::Clip& tiny() {
  static vlmadapt::Clip clip = vlmadapt::load_clip(vt::tiny_vit());
  return clip;
}

TaskContext task() {
  TaskContext t;
  t.clip = tiny();
  t.classnames = kClasses;
  t.templates = {"a photo of a {}.", "art of the {}.", "a {} in a video game."};
  return t;
}

// Features of random pixels through the tiny image tower, labels 0, 1, 2, 0, ...
FeatureSet features(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  auto px = torch::randn({n, 3, tiny()->image_resolution(), tiny()->image_resolution()});
  return {tiny()->encode_image(px), torch::arange(n) % 3};
}

std::shared_ptr<Method> make(const std::string& name, const std::map<std::string, std::string>& values = {}) {
  auto m = vlmadapt::make_method(name, values);
  m->setup(task());
  return m;
}

torch::Tensor zero_shot_logits(const torch::Tensor& f) {
  auto zs = make("zeroshot");
  torch::NoGradGuard no_grad;
  return zs->logits({{}, f, {}});
}

TEST(TipAdapter, LogitsAreZeroShotPlusAlphaTimesTheCacheOfTheAveragedViews) {
  auto m = make("tip_adapter", {{"tip_adapter.search", "off"}, {"tip_adapter.alpha", "2"}, {"tip_adapter.beta", "3"}});
  // Two views of 6 images, view-major: the keys are the normalised mean of the views.
  auto support = features(12, 1);
  support.labels = torch::tensor({0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2});
  m->fit(FitData{support, 2});
  auto keys = fewshot::normalized(support.features.view({2, 6, -1}).mean(0));
  auto test = features(5, 2).features;
  auto f = fewshot::normalized(test);
  auto expected = zero_shot_logits(test) + 2 * torch::exp(-3 * (1 - f.mm(keys.t()))).mm(
                                               torch::one_hot(torch::tensor({0, 1, 2, 0, 1, 2}), 3).to(torch::kFloat));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(m->logits({{}, test, {}}), expected, 1e-5, 1e-4));
  // alpha = 0 is zero-shot, bit for bit.
  auto off = make("tip_adapter", {{"tip_adapter.search", "off"}, {"tip_adapter.alpha", "0"}});
  off->fit(FitData{support, 2});
  EXPECT_TRUE(torch::equal(off->logits({{}, test, {}}), zero_shot_logits(test)));
}

TEST(TipAdapter, SearchFollowsTheSelectionMode) {
  auto support = features(12, 1), val = features(9, 3);
  auto none = make("tip_adapter");  // search = auto
  none->fit(FitData{support, 1, val, {}, vlmadapt::Selection::None});
  EXPECT_EQ(none->chosen().at("alpha"), 1.0);  // the initial values, nothing searched
  EXPECT_EQ(none->chosen().at("beta"), 1.0);
  auto searched = make("tip_adapter", {{"tip_adapter.alpha", "0.05"}});
  searched->fit(FitData{support, 1, val});
  EXPECT_GE(searched->chosen().at("alpha"), 0.1);  // from the grid, not the initial 0.05
  auto on = make("tip_adapter", {{"tip_adapter.search", "on"}});
  const auto error = vt::error_of([&] { on->fit(FitData{support, 1, val, {}, vlmadapt::Selection::None}); });
  EXPECT_NE(error.find("tip_adapter.search = on, but train.selection = none"), std::string::npos) << error;
  EXPECT_NE(vt::error_of([&] { searched->fit(FitData{support, 1, {torch::zeros({0, support.features.size(1)}), torch::zeros({0}, torch::kLong)}}); })
                .find("validation split, which is empty"),
            std::string::npos);
}

TEST(TipAdapterF, LearnsOnlyTheKeysAndKeepsTheBestValidationEpoch) {
  auto m = make("tip_adapter_f", {{"tip_adapter_f.augment_epochs", "0"}});
  auto support = features(12, 1), val = features(9, 3);
  m->fit(FitData{support, 1, val});
  auto params = m->trainable_parameters();
  ASSERT_EQ(params.size(), 1u);
  const auto keys = m->state().at("keys");
  EXPECT_TRUE(torch::equal(params[0], keys));  // the adapter starts at the cache keys
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(0.01));
  for (int epoch = 0; epoch < 3; ++epoch) {
    opt.zero_grad();
    m->loss({{}, support.features, support.labels}).backward();
    opt.step();
    m->on_epoch_end(epoch, 3);
  }
  EXPECT_FALSE(torch::equal(params[0], keys));
  EXPECT_TRUE(torch::equal(m->state().at("keys"), keys));  // the cache itself is fixed
  const auto epoch = m->chosen().at("epoch");
  EXPECT_GE(epoch, 1);
  EXPECT_LE(epoch, 3);
  m->on_train_end();
  EXPECT_TRUE(torch::equal(params[0], m->state().at("best_adapter")));
}

TEST(Gda, AlphaComesFromTheGridOnValidationOrIsTheFixedOne) {
  auto support = features(30, 1), val = features(9, 3);
  auto m = make("gda", {{"gda.alpha_grid", "0.5|7"}});
  m->fit(FitData{support, 1, val});
  const double a = m->chosen().at("alpha");
  EXPECT_TRUE(a == 0.5 || a == 7) << a;
  auto fixed = make("gda", {{"gda.alpha", "0.25"}});
  fixed->fit(FitData{support, 1, val, {}, vlmadapt::Selection::None});
  EXPECT_EQ(fixed->chosen().at("alpha"), 0.25);
  // 30 features of 3 classes in the tiny model's dimension: too few without shrinkage.
  auto plain = make("gda", {{"gda.shrinkage", "none"}});
  EXPECT_NE(vt::error_of([&] { plain->fit(FitData{support, 1, val}); }).find("singular"), std::string::npos);
}

TEST(LpPp, AlphaStepsEveryBlockAndTheOfficialCumulativeGradientDiffers) {
  auto support = features(12, 1), val = features(9, 3);
  auto test = features(4, 5).features;
  auto run = [&](const std::string& iterations, const std::string& cumulative) {
    auto m = make("lp_pp", {{"lp_pp.iterations", iterations}, {"lp_pp.cumulative_alpha_grad", cumulative}});
    m->fit(FitData{support, 1, val, {}, vlmadapt::Selection::None});
    torch::NoGradGuard no_grad;
    return std::make_pair(m->logits({{}, test, {}}), m->chosen().at("iteration"));
  };
  // Before the first alpha step (iteration 10) both rules are the same computation.
  EXPECT_TRUE(torch::equal(run("9", "false").first, run("9", "true").first));
  // At iteration 10 the paper steps with g_10, the official code with g_1 + ... + g_10.
  EXPECT_FALSE(torch::equal(run("10", "false").first, run("10", "true").first));
  EXPECT_EQ(run("10", "false").second, 10);  // selection none: the last iteration
  auto selected = make("lp_pp", {{"lp_pp.iterations", "30"}});
  selected->fit(FitData{support, 1, val});
  EXPECT_GE(selected->chosen().at("iteration"), 1);
  EXPECT_LE(selected->chosen().at("iteration"), 30);
}

TEST(Clap, PenaltyIsZeroAtTheTextPrototypesAndLambdaWeightedAway) {
  auto m = make("clap", {{"clap.augment_epochs", "0"}});
  auto support = features(12, 1);
  m->fit(FitData{support, 1});
  auto state = m->state();
  ASSERT_EQ(m->trainable_parameters().size(), 1u);
  EXPECT_TRUE(torch::equal(state.at("prototypes"), state.at("base")));
  // lambda_c: the mean zero-shot probability of class c over its support images.
  auto probs = torch::softmax(zero_shot_logits(support.features), 1);  // template: the first, as CLAP's
  for (int64_t c = 0; c < 3; ++c) {
    auto own = probs.index({support.labels == c, c}).mean();
    EXPECT_NEAR(state.at("lambda")[c].item<double>(), own.item<double>(), 1e-5) << c;
  }
  Batch b{{}, support.features, support.labels};
  auto ce = torch::nn::functional::cross_entropy(m->logits(b), b.labels);
  EXPECT_NEAR(m->loss(b).item<double>(), ce.item<double>(), 1e-6);  // W = T: no penalty
  {
    torch::NoGradGuard no_grad;
    m->trainable_parameters()[0][1] += 2.0f;  // move class 1's prototype by 2 in every dimension
  }
  const double e = static_cast<double>(support.features.size(1));
  auto moved_ce = torch::nn::functional::cross_entropy(m->logits(b), b.labels).item<double>();
  EXPECT_NEAR(m->loss(b).item<double>() - moved_ce, state.at("lambda")[1].item<double>() * 4 * e / 3, 1e-4);
}

TEST(Zpe, WeighsPromptsOnUnlabelledImagesOnly) {
  auto m = make("zpe");
  EXPECT_TRUE(m->contract().unlabelled_test);
  EXPECT_EQ(m->contract().support_views, -1);
  EXPECT_NE(vt::error_of([&] { m->fit(FitData{}); }).find("no test images"), std::string::npos);
  FitData data;
  data.unlabelled = features(20, 7).features;
  m->fit(data);
  auto w = m->state().at("prompt_weights");
  ASSERT_EQ(w.numel(), 3);
  EXPECT_NEAR(w.sum().item<double>(), 1.0, 1e-6);
  // The logits are those of the weighted classifier, bit-compatible with the formula.
  vlmadapt::Tokenizer tok;
  auto text = vlmadapt::template_text_features(tiny(), tok, kClasses, task().templates, true);
  auto test = features(4, 8).features;
  auto expected = tiny()->logit_scale().exp() * fewshot::normalized(test).mm(fewshot::weighted_classifier(text, w).t());
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::allclose(m->logits({{}, test, {}}), expected, 1e-5, 1e-5));
  }
  // The paper's full correction with a folder of "pretraining" images: other scores.
  const auto folder = (vt::source_dir() / "tests" / "data" / "images").string();
  auto both = make("zpe", {{"zpe.pretrain_images", folder}});
  both->fit(data);
  EXPECT_FALSE(torch::allclose(both->state().at("scores"), m->state().at("scores")));
  auto missing = make("zpe", {{"zpe.debias", "both"}});
  EXPECT_NE(vt::error_of([&] { missing->fit(data); }).find("zpe.pretrain_images"), std::string::npos);
  auto nowhere = make("zpe", {{"zpe.pretrain_images", folder + "/no_such"}});
  EXPECT_NE(vt::error_of([&] { nowhere->fit(data); }).find("no such folder"), std::string::npos);
}

TEST(TextClassifier, ZpeTemplatesNeedTheUnlabelledTestImages) {
  auto m = make("gda", {{"gda.templates", "zpe"}});
  EXPECT_TRUE(m->contract().unlabelled_test);
  EXPECT_FALSE(make("gda")->contract().unlabelled_test);
  auto support = features(12, 1);
  EXPECT_NE(vt::error_of([&] { m->fit(FitData{support, 1}); }).find("templates = zpe"), std::string::npos);
  FitData data{support, 1};
  data.unlabelled = features(20, 7).features;
  data.selection = vlmadapt::Selection::None;
  m->fit(data);
  EXPECT_EQ(m->state().at("prompt_weights").numel(), 3);
}

// ---- the support set a run builds, and selection that never sees test labels ----

vlmadapt::Recipe builtin_recipe(const std::string& method, const fs::path& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> overrides = {"method=" + method, "output=" + out.string(), "data.shots=2",
                                        "data.test_limit=40",  "data.workers=1"};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return vlmadapt::load_recipe({}, overrides);
}

TEST(FitData, SupportViewsAreViewMajorAndTheSupportFolderJoinsImageWise) {
  const auto dir = vt::temp_dir("fit_support");
  // Two images for "Sandal" and one for "ankle_boot" (matched ignoring case and '_').
  fs::create_directories(dir / "support" / "Sandal");
  fs::create_directories(dir / "support" / "ankle_boot");
  const auto images = vt::source_dir() / "tests" / "data" / "images";
  fs::copy_file(images / "rgb16_35x29.png", dir / "support" / "Sandal" / "a.png");
  fs::copy_file(images / "la_33x27.png", dir / "support" / "Sandal" / "b.png");
  fs::copy_file(images / "gray_40x30.jpg", dir / "support" / "ankle_boot" / "c.jpg");
  auto recipe = builtin_recipe("tip_adapter", dir / "runs", {"tip_adapter.augment_epochs=2", "data.support=" + (dir / "support").string()});
  auto c = vlmadapt::open_run_context(recipe, "");
  auto d = vlmadapt::fit_data(c);
  const int64_t train = static_cast<int64_t>(c.task.train.size());
  ASSERT_EQ(d.views, 2);
  ASSERT_EQ(d.images(), train + 3);
  // Labels repeat per view: the few-shot images, then the folder's (Sandal = 5, Ankle boot = 9).
  auto labels = d.support.labels.view({2, -1});
  EXPECT_TRUE(torch::equal(labels[0], labels[1]));
  EXPECT_EQ(labels[0][train].item<int64_t>(), 5);
  EXPECT_EQ(labels[0][train + 2].item<int64_t>(), 9);
  EXPECT_FALSE(torch::equal(d.support.features[0], d.support.features[train + 3]));  // two different views
  auto replaced = builtin_recipe("tip_adapter", dir / "runs", {"data.support=" + (dir / "support").string(), "data.support_mode=replace"});
  auto cr = vlmadapt::open_run_context(replaced, "");
  EXPECT_EQ(vlmadapt::fit_data(cr).images(), 3);
  // Errors: an unknown class folder, a method that fits nothing.
  fs::create_directories(dir / "support" / "Spaceship");
  fs::copy_file(images / "la_33x27.png", dir / "support" / "Spaceship" / "d.png");
  auto error = vt::error_of([&] { vlmadapt::fit_data(c); });
  EXPECT_NE(error.find("data.support"), std::string::npos) << error;
  EXPECT_NE(error.find("'Spaceship' is not a class of the task"), std::string::npos) << error;
  auto coop = vlmadapt::open_run_context(builtin_recipe("coop", dir / "runs", {"data.support=" + (dir / "support").string()}), "");
  EXPECT_NE(vt::error_of([&] { vlmadapt::fit_data(coop); }).find("does not fit a support set"), std::string::npos);
  fs::remove_all(dir);
}

// The check: a test split deliberately mislabelled changes nothing that is chosen.
TEST(FitData, ChoicesDoNotDependOnTestLabels) {
  const auto dir = vt::temp_dir("fit_mislabelled");
  for (const std::string method : {"tip_adapter", "gda", "lp_pp"}) {
    auto recipe = builtin_recipe(method, dir / "runs", {method + ".templates=zpe"});
    auto c = vlmadapt::open_run_context(recipe, "");
    c.method->fit(vlmadapt::fit_data(c));
    const auto chosen = c.method->chosen();
    for (auto& item : c.task.test) item.label = (item.label + 3) % 10;  // every test label wrong
    c.method = vlmadapt::make_method(recipe.method_options());
    c.set_classes(c.task);
    auto d = vlmadapt::fit_data(c);
    EXPECT_GT(d.unlabelled.size(0), 0) << method;  // the test images are used, unlabelled
    c.method->fit(d);
    EXPECT_EQ(c.method->chosen(), chosen) << method;
  }
  fs::remove_all(dir);
}

}  // namespace

// vlmadapt bench fit takes the method's options (--set), as bench step does.
TEST(BenchFit, TakesTheMethodsOptions) {
  vlmadapt::BenchOptions o;
  o.task = "fit";
  o.arch = "default";
  o.n_cls = 5;
  o.shots = 2;
  o.reps = 1;
  o.method = "lp_pp";
  o.sets = {"lp_pp.iterations=3"};
  const auto out = vlmadapt::run_bench(o);
  EXPECT_LE(out.at("chosen").at("iteration").get<double>(), 3.0) << out;
  EXPECT_EQ(out.at("set").at("lp_pp.iterations"), "3");
  o.sets = {"lp_pp.iterations=0"};
  EXPECT_NE(vlmadapt::testing::error_of([&] { vlmadapt::run_bench(o); }).find("lp_pp.iterations"), std::string::npos);
}
