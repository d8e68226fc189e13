// Test-time adaptation: selection, losses and rewards on known numbers; views; the
// episodic reset of tpt and rlcf; exact chunked recomputation; the --stream CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include <vlmadapt/data/augmix.h>
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/image.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/adapt/tta.h>

#include <vlmadapt/cli/cli.h>
#include "test_util.h"

namespace vlmadapt {
namespace {

namespace vt = vlmadapt::testing;
using testing::error_of;

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

Clip& tiny() {
  static Clip clip = load_clip(vt::tiny_vit());
  return clip;
}

std::string image_path(const std::string& name) { return (vt::fixtures() / "preprocess" / "images" / name).string(); }

TaskContext task() {
  TaskContext t;
  t.clip = tiny();
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}."};
  return t;
}

// The 64 views of a fixture image as the evaluator hands them to a method.
Batch views_of(const std::string& name, bool features, uint64_t index = 0) {
  TtaViewOptions o;
  o.n_px = static_cast<int>(tiny()->image_resolution());
  Batch b;
  b.pixels = tta_views(decode_image(image_path(name)), {}, o, true, index);
  if (features) {
    torch::NoGradGuard no_grad;
    b.image_features = tiny()->encode_image(b.pixels);
  }
  return b;
}

std::shared_ptr<Method> method(const std::string& name, const std::map<std::string, std::string>& values = {}) {
  auto m = make_method(name, values);
  m->setup(task());
  return m;
}

TEST(TtaSelection, KeepsTheLowestEntropyViews) {
  // Rows 2 and 5 are the most peaked, row 7 next; the rest are flat or nearly so.
  auto logits = torch::zeros({10, 4});
  logits[2][1] = 9;
  logits[5][3] = 7;
  logits[7][0] = 4;
  logits[1][2] = 0.5;
  auto kept = tta::confident_views(logits, 0.2);  // int(10 * 0.2) = 2
  EXPECT_TRUE(torch::equal(kept, torch::tensor({2, 5}, torch::kLong)));
  EXPECT_TRUE(torch::equal(tta::confident_views(logits, 0.3), torch::tensor({2, 5, 7}, torch::kLong)));
  EXPECT_EQ(tta::confident_views(logits, 0.01).numel(), 1);  // never empty
  // TPT's default on 64 views keeps int(6.4) = 6.
  EXPECT_EQ(tta::confident_views(torch::randn({64, 10}), 0.1).numel(), 6);
}

TEST(TtaSelection, CosineFilterKeepsViewZeroAndTheMostSimilar) {
  auto logits = torch::tensor({{4.f, 1.f, 0.f}, {-4.f, 0.f, 0.f}, {8.f, 2.f, 0.1f}, {0.f, 0.f, 5.f},
                               {3.f, 1.f, 1.f}, {0.f, 4.f, 0.f}});
  auto kept = tta::similar_views(logits, 0.4);  // int(5 * 0.4) = 2 of the 5 others
  EXPECT_TRUE(torch::equal(kept, torch::tensor({0, 2, 4}, torch::kLong)));
}

TEST(TtaLoss, MarginalEntropyEqualsTheFormula) {
  auto logits = torch::tensor({{2.f, 0.f, -1.f}, {0.5f, 0.5f, 3.f}, {-2.f, 1.f, 0.f}});
  auto mean_p = torch::softmax(logits.to(torch::kDouble), -1).mean(0);
  const double expected = -(mean_p * mean_p.log()).sum().item<double>();
  EXPECT_NEAR(tta::marginal_entropy(logits).item<double>(), expected, 1e-6);
  // Equal logits: the entropy of the uniform distribution.
  EXPECT_NEAR(tta::marginal_entropy(torch::zeros({5, 7})).item<double>(), std::log(7.0), 1e-6);
  // One-hot beyond float range stays finite (the clamp at the dtype minimum).
  auto sharp = torch::tensor({{1000.f, -1000.f}, {1000.f, -1000.f}});
  EXPECT_TRUE(std::isfinite(tta::marginal_entropy(sharp).item<double>()));
  EXPECT_NEAR(tta::entropy(torch::zeros({1, 4}))[0].item<double>(), std::log(4.0), 1e-6);
}

TEST(TtaReward, ClipScoreAndBaselineOnKnownNumbers) {
  auto image = torch::tensor({{2.f, 0.f}, {0.f, 3.f}});                          // unit after scaling
  auto text = torch::tensor({{1.f, 0.f}, {0.f, 1.f}, {1.f, 1.f}, {-1.f, 0.f}});  // normalised inside
  auto classes = torch::tensor({{0, 2, 3}, {1, 3, 2}}, torch::kLong);
  auto r = tta::clip_reward(image, text, classes, 2.5);
  const float h = static_cast<float>(2.5 / std::sqrt(2.0));
  auto expected = torch::tensor({{2.5f, h, 0.f}, {2.5f, 0.f, h}});  // negative cosines give 0
  EXPECT_TRUE(torch::allclose(r, expected, 1e-6, 1e-6)) << r;

  auto logits = torch::tensor({{1.f, 2.f, 0.f, -1.f}, {0.f, 0.f, 3.f, 1.f}}).requires_grad_(true);
  auto loss = tta::reinforce_loss(logits, classes, r);
  // By hand: advantage = reward - row mean; loss = mean(advantage * CE).
  auto logp = torch::log_softmax(logits.detach(), -1);
  double total = 0;
  for (int64_t i = 0; i < 2; ++i) {
    const double mean = r[i].mean().item<double>();
    for (int64_t k = 0; k < 3; ++k)
      total += (r[i][k].item<double>() - mean) * -logp[i][classes[i][k].item<int64_t>()].item<double>();
  }
  EXPECT_NEAR(loss.item<double>(), total / 6, 1e-6);
  loss.backward();  // the reward is a constant: gradients reach the logits only
  EXPECT_TRUE(logits.grad().defined());
}

TEST(TtaViews, TestViewFirstThenSeededAugmentedViews) {
  TtaViewOptions o;
  o.views = 8;
  o.n_px = 32;
  const Image img = decode_image(image_path("chelsea.png"));
  auto a = tta_views(img, {}, o, true, 3), b = tta_views(img, {}, o, true, 3), c = tta_views(img, {}, o, true, 4);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{8, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(a[0], normalize(resize_crop(img, 32))));
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_TRUE(torch::equal(a[0], c[0]));
  EXPECT_FALSE(torch::equal(a.narrow(0, 1, 7), c.narrow(0, 1, 7)));
  EXPECT_FALSE(torch::equal(a, tta_views(img, {}, o, false, 3)));  // AugMix changes the views
  auto extra = tta_views(img, {image_path("coffee.png"), image_path("camera.png")}, o, false, 3);
  EXPECT_EQ(extra.size(0), 10);
  EXPECT_TRUE(torch::equal(extra[9], normalize(resize_crop(decode_image(image_path("camera.png")), 32))));
  o.views = 0;
  EXPECT_NE(error_of([&] { tta_views(img, {}, o, true, 0); }).find("eval.views"), std::string::npos);
}

TEST(TtaViews, ExtraViewsAreFoundByImageName) {
  auto dir = vt::temp_dir("extra_views");
  std::filesystem::create_directories(dir / "test");
  for (const char* f : {"test/12_1.png", "test/12_0.png", "test/12_10.png", "test/7_0.png", "notes.txt"})
    std::ofstream(dir / f) << "x";
  ExtraViews extra(dir.string());
  ASSERT_EQ(extra.of("test/12").size(), 3u);
  EXPECT_EQ(std::filesystem::path(extra.of("test/12")[2]).filename(), "12_10.png");  // numeric order
  EXPECT_EQ(extra.of("test/7.png").size(), 1u);
  EXPECT_TRUE(extra.of("test/99").empty());
  EXPECT_NE(error_of([&] { ExtraViews((dir / "nope").string()); }).find("not a folder"), std::string::npos);
}

TEST(AugMix, OperationsOnKnownPixels) {
  cv::Mat img(1, 4, CV_8UC3);
  const uchar v[4] = {50, 100, 150, 200};
  for (int i = 0; i < 4; ++i) img.at<cv::Vec3b>(0, i) = {v[i], v[i], v[i]};
  EXPECT_EQ(augmix::autocontrast(img).at<cv::Vec3b>(0, 0)[0], 0);
  EXPECT_EQ(augmix::autocontrast(img).at<cv::Vec3b>(0, 3)[1], 255);
  EXPECT_EQ(augmix::solarize(img, 128).at<cv::Vec3b>(0, 2)[0], 255 - 150);
  EXPECT_EQ(augmix::solarize(img, 128).at<cv::Vec3b>(0, 1)[0], 100);
  EXPECT_EQ(augmix::posterize(img, 2).at<cv::Vec3b>(0, 2)[2], 128);  // 150 & 0b11000000
  EXPECT_EQ(augmix::equalize(img).at<cv::Vec3b>(0, 3)[0], 200);     // Pillow: too few pixels, no change
  cv::Mat two(1, 600, CV_8UC3, cv::Scalar::all(10));
  two.colRange(300, 600).setTo(cv::Scalar::all(20));
  EXPECT_EQ(augmix::equalize(two).at<cv::Vec3b>(0, 0)[0], 0);  // Pillow's lut: step (600 - 300) / 255 = 1
  EXPECT_EQ(augmix::equalize(two).at<cv::Vec3b>(0, 599)[2], 255);
  const cv::Mat photo = read_image(image_path("chelsea.png"));
  EXPECT_EQ(cv::norm(augmix::affine(photo, 1, 0, 0, 0, 1, 0), photo, cv::NORM_INF), 0);
  cv::Mat shifted = augmix::affine(photo, 1, 0, 2, 0, 1, 0);  // output x samples input x + 2
  EXPECT_EQ(shifted.at<cv::Vec3b>(10, 5), photo.at<cv::Vec3b>(10, 7));
  std::mt19937_64 rng(1);
  for (const auto& op : augmix::operation_names())
    EXPECT_EQ(augmix::apply(op, photo, 1, rng).size(), photo.size()) << op;
  EXPECT_NE(error_of([&] { augmix::apply("blur", photo, 1, rng); }).find("unknown operation 'blur'"), std::string::npos);
}

TEST(TextChunks, RecomputedGradientsEqualTheDirectOnes) {
  PromptLearnerOptions o;
  o.n_ctx = 4;
  torch::manual_seed(3);
  PromptLearner direct(tiny(), Tokenizer(), o, 1);
  direct->set_classes(kClasses);
  PromptLearner chunked(tiny(), Tokenizer(), o, 1);
  chunked->set_classes(kClasses);
  {
    torch::NoGradGuard no_grad;
    chunked->ctx().copy_(direct->ctx());
  }
  chunked->chunk = 3;  // 10 classes in chunks of 3, 3, 3, 1
  auto weights = torch::randn({10, tiny()->embed_dim()});
  auto a = direct->text_features(), b = chunked->text_features();
  // The chunked forward keeps no graph, so it takes the fused inference pass: equal up to
  // float rounding.
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-5 * a.abs().max().item<double>());
  (a * weights).sum().backward();
  (b * weights).sum().backward();
  // Equal up to float rounding (BLAS blocks a 3-row product differently from a 10-row one).
  const auto g = direct->ctx().grad(), h = chunked->ctx().grad();
  const double scale = g.abs().max().item<double>();
  EXPECT_GT(scale, 0);
  EXPECT_LT((g - h).abs().max().item<double>(), 1e-5 * scale) << (g - h).abs().max().item<double>() << " of " << scale;
}

TEST(Tpt, WithoutStepsItIsZeroShotWithTheSamePrompt) {
  auto tpt = method("tpt", {{"tpt.steps", "0"}});
  auto zs = method("zeroshot", {{"zeroshot.templates", "a photo of a {}."}});
  Batch b = views_of("fmnist736.png", true);
  Batch first{{}, b.image_features.narrow(0, 0, 1), {}};
  EXPECT_TRUE(torch::allclose(tpt->adapt_and_predict(b), zs->logits(first), 1e-4, 1e-4));
}

TEST(Tpt, EpisodicGivesTheSamePredictionTwiceContinualMovesOn) {
  auto tpt = method("tpt");
  Batch b = views_of("fmnist736.png", true);
  auto first = tpt->adapt_and_predict(b), second = tpt->adapt_and_predict(b);
  EXPECT_TRUE(torch::equal(first, second));
  auto untuned = method("tpt", {{"tpt.steps", "0"}})->adapt_and_predict(b);
  EXPECT_FALSE(torch::allclose(first, untuned, 0, 1e-6));  // one step changed the prompt
  // TPT lowers the entropy of the confident views it tunes on.
  auto continual = method("tpt", {{"tpt.continual", "true"}});
  auto c1 = continual->adapt_and_predict(b), c2 = continual->adapt_and_predict(b);
  EXPECT_TRUE(torch::equal(c1, first));
  EXPECT_FALSE(torch::equal(c1, c2));
}

TEST(Tpt, DiffTptFilterRunsOverTheViews) {
  auto tpt = method("tpt", {{"tpt.cosine_selection", "0.8"}, {"tpt.selection", "0.3"}, {"tpt.steps", "4"}});
  Batch b = views_of("fmnist736.png", true);
  auto a = tpt->adapt_and_predict(b);
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  EXPECT_TRUE(torch::equal(a, tpt->adapt_and_predict(b)));
}

TEST(Rlcf, PromptVariantIsEpisodic) {
  auto rlcf = method("rlcf");
  Batch b = views_of("fmnist736.png", true);
  auto first = rlcf->adapt_and_predict(b);
  EXPECT_TRUE(torch::equal(first, rlcf->adapt_and_predict(b)));
  EXPECT_FALSE(torch::allclose(first, method("rlcf", {{"rlcf.steps", "0"}})->adapt_and_predict(b), 0, 1e-6));
}

TEST(Rlcf, ImageVariantRestoresTheBackbone) {
  for (const char* norm_only : {"false", "true"}) {
    auto rlcf = method("rlcf_image", {{"rlcf_image.lr", "0.001"}, {"rlcf_image.norm_only", norm_only}});
    ASSERT_EQ(rlcf->contract().input, vlmadapt::Input::Pixels);
    auto before = tiny()->weights();
    for (auto& [k, v] : before) v = v.clone();
    Batch b = views_of("fmnist736.png", false);
    auto first = rlcf->adapt_and_predict(b);
    EXPECT_TRUE(torch::equal(first, rlcf->adapt_and_predict(b))) << norm_only;
    for (const auto& item : tiny()->named_parameters(true)) {
      EXPECT_TRUE(torch::equal(item.value(), before.at(item.key()))) << item.key();
      EXPECT_FALSE(item.value().requires_grad()) << item.key();
    }
    auto untuned = method("rlcf_image", {{"rlcf_image.steps", "0"}})->adapt_and_predict(b);
    EXPECT_FALSE(torch::allclose(first, untuned, 0, 1e-7)) << norm_only;
  }
}

TEST(Rlcf, RewardModelMayBeAnotherClip) {
  auto rlcf = method("rlcf", {{"rlcf.reward_model", (vt::fixtures() / "clip" / "tiny_rn" / "model_openai.pt").string()}});
  auto out = rlcf->adapt_and_predict(views_of("fmnist736.png", true));
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_NE(error_of([] { method("rlcf", {{"rlcf.reward_model", "/nonexistent/reward.pt"}}); }).find("/nonexistent/reward.pt"),
            std::string::npos);
}

TEST(TtaCli, StreamPrintsOneJsonLinePerImageAndReportsBadFiles) {
  std::ostringstream out, err;
  const std::vector<std::string> args = {"tta", "--recipe", (vt::source_dir() / "recipes/datasets/fashion_mnist.ini").string(),
                                         "--recipe", (vt::source_dir() / "recipes/tpt/tpt.ini").string(),
                                         "--set", "model.checkpoint=" + vt::tiny_vit(), "eval.views=16",
                                         "--stream", image_path("fmnist736.png"), image_path("fmnist736.png"),
                                         "/nonexistent/x.png"};
  const int code = cli::run(args, out, err);
  EXPECT_NE(code, 0);
  EXPECT_NE(err.str().find("1 image(s) could not be classified"), std::string::npos) << err.str();
  std::istringstream lines(out.str());
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 3u) << out.str();
  ASSERT_EQ(rows[0]["top"].size(), 5u);
  EXPECT_EQ(rows[0]["top"], rows[1]["top"]);  // episodic, views seeded by the file: the same answer
  EXPECT_GT(rows[0]["seconds"].get<double>(), 0);
  EXPECT_NE(rows[2]["error"].get<std::string>().find("/nonexistent/x.png"), std::string::npos);
}

}  // namespace
}  // namespace vlmadapt

namespace vlmadapt {
namespace {

// Many classes: the prompts in chunks, gradients recomputed chunk by chunk, give the
// same adapted prediction as one pass over all classes.
TEST(Tpt, ChunkedClassPromptsGiveTheSamePrediction) {
  auto names = builtin_prompts("ImageNet").classnames;
  names.resize(200);
  TaskContext t = task();
  t.classnames = names;
  Batch b = views_of("chelsea.png", true);
  auto whole = make_method("tpt", {{"tpt.text_chunk", "0"}}), chunked = make_method("tpt", {{"tpt.text_chunk", "64"}});
  whole->setup(t);
  chunked->setup(t);
  auto a = whole->adapt_and_predict(b), c = chunked->adapt_and_predict(b);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{1, 200}));
  EXPECT_TRUE(torch::allclose(a, c, 1e-4, 1e-4)) << (a - c).abs().max().item<double>();
  EXPECT_EQ(a.argmax().item<int64_t>(), c.argmax().item<int64_t>());
}

}  // namespace
}  // namespace vlmadapt

namespace vlmadapt {
namespace {

// TPT from a trained CoOp context: the run's ctx is where tuning starts, and where every
// image's reset returns to.
TEST(Tpt, StartsFromACoopRun) {
  auto run = vt::temp_dir("coop_run");
  torch::manual_seed(5);
  auto ctx = torch::randn({4, tiny()->text_width()}) * 0.02;
  write_safetensors((run / "method.safetensors").string(), {{"prompt_learner.ctx", ctx}});
  auto tpt = method("tpt", {{"tpt.init_run", run.string()}, {"tpt.steps", "0"}});
  PromptLearnerOptions po;
  po.n_ctx = 4;
  po.ctx_init.clear();
  PromptLearner learner(tiny(), Tokenizer(), po, 1);
  learner->set_classes(kClasses);
  torch::NoGradGuard no_grad;
  auto text = learner->text_features(ctx);
  Batch b = views_of("fmnist736.png", true);
  auto expected = cosine_logits(tiny(), b.image_features.narrow(0, 0, 1), text / text.norm(2, -1, true));
  EXPECT_TRUE(torch::allclose(tpt->adapt_and_predict(b), expected, 1e-5, 1e-5));

  write_safetensors((run / "method.safetensors").string(), {{"prompt_learner.ctx", torch::zeros({10, 4, tiny()->text_width()})}});
  EXPECT_NE(error_of([&] { method("tpt", {{"tpt.init_run", run.string()}}); }).find("class-specific"), std::string::npos);
  EXPECT_NE(error_of([] { method("tpt", {{"tpt.init_run", "/nonexistent/run"}}); }).find("/nonexistent/run/method.safetensors"),
            std::string::npos);
}

}  // namespace
}  // namespace vlmadapt
