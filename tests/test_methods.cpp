// Contract tests over every registered method (timm style), and method specifics.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

#include "methods/coop.h"
#include "methods/linear_probe.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
using vlmadapt::Batch;
using vlmadapt::FeatureSet;
using vlmadapt::Method;
using vlmadapt::TaskContext;

namespace {

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

TaskContext task(vlmadapt::Clip clip) {
  TaskContext t;
  t.clip = clip;
  t.dataset = "fashion_mnist";
  t.classnames = kClasses;
  t.templates = {"a photo of a {}.", "a photo of the {}, a type of clothing."};
  return t;
}

vlmadapt::Clip& shared_clip() {
  static vlmadapt::Clip clip = vlmadapt::load_clip(vt::tiny_vit());
  return clip;
}

// A labelled set of frozen features from random pixels (deterministic).
FeatureSet features(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  auto& clip = shared_clip();
  torch::NoGradGuard no_grad;
  auto px = torch::randn({n, 3, clip->image_resolution(), clip->image_resolution()});
  return {clip->encode_image(px), torch::arange(n) % static_cast<int64_t>(kClasses.size())};
}

Batch batch_for(Method& m, int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  auto& clip = shared_clip();
  auto px = torch::randn({n, 3, clip->image_resolution(), clip->image_resolution()});
  Batch b;
  b.labels = torch::arange(n) % static_cast<int64_t>(kClasses.size());
  b.pixels = px;  // as the evaluator: pixels always, frozen features when the method takes them
  if (m.contract().input == vlmadapt::Input::Features) {
    torch::NoGradGuard no_grad;
    b.image_features = clip->encode_image(px);
  }
  return b;
}

// Options whose defaults are the paper's for a 12-layer ViT-B/16 and exceed the tiny
// model's 2 layers (the default on it is an error: DepthBeyondTheTowerIsAClearError).
std::map<std::string, std::string> tiny_model_options(const std::string& name) {
  if (name == "maple") return {{"maple.depth", "2"}};
  if (name == "promptsrc") return {{"promptsrc.depth_text", "2"}, {"promptsrc.depth_vision", "2"}};
  return {};
}

// A method built and set up from a seed, and fitted when it fits, as the run does it.
std::shared_ptr<Method> build(const std::string& name, uint64_t seed, bool fit = true) {
  shared_clip();  // loaded before seeding (loading leaves the stream alone anyway)
  torch::manual_seed(seed);
  auto m = vlmadapt::make_method(name, tiny_model_options(name));
  m->setup(task(shared_clip()));
  if (fit && m->contract().fits) {
    vlmadapt::FitData data{features(40, 11), 1, features(20, 12)};
    if (m->contract().unlabelled_test) data.unlabelled = features(30, 13).features;  // ZPE's test images
    m->fit(data);
  }
  return m;
}

// One optimisation step of the shared loop's kind, for methods that train.
void train_step(Method& m, uint64_t seed) {
  if (!m.contract().trains) return;
  torch::optim::SGD opt(m.trainable_parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  opt.zero_grad();
  m.loss(batch_for(m, 8, seed)).backward();
  opt.step();
}

// What the evaluator gets for a batch: the adapted prediction of one image's views, or logits.
torch::Tensor predict(Method& m, const Batch& b) {
  if (m.contract().adapts()) return m.adapt_and_predict(b);
  torch::NoGradGuard no_grad;
  return m.logits(b);
}

class MethodContract : public ::testing::TestWithParam<std::string> {};

TEST_P(MethodContract, DeclaresAConsistentContract) {
  auto m = build(GetParam(), 1);
  const auto c = m->contract();
  if (c.trains) EXPECT_FALSE(m->trainable_parameters().empty()) << "a method that trains must have parameters";
  // The names the registry and recipes use for the contract's choices.
  EXPECT_NE(vlmadapt::to_string(c.input), "?");
  EXPECT_NE(vlmadapt::to_string(c.adaptation), "?");
}

TEST_P(MethodContract, LogitsHaveTheRightShapeAndAreFinite) {
  auto m = build(GetParam(), 1);
  auto b = batch_for(*m, 6, 2);
  auto logits = predict(*m, b);
  const int64_t rows = m->contract().adapts() ? 1 : 6;
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{rows, static_cast<int64_t>(kClasses.size())}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST_P(MethodContract, FrozenBackboneGetsNoGradientAndDoesNotChange) {
  auto m = build(GetParam(), 1);
  auto before = shared_clip()->weights();
  for (auto& [k, v] : before) v = v.clone();
  train_step(*m, 3);
  if (m->contract().adapts()) m->adapt_and_predict(batch_for(*m, 8, 4));  // tuning per image leaves no trace
  for (const auto& item : shared_clip()->named_parameters(true)) {
    EXPECT_FALSE(item.value().grad().defined()) << item.key();
    EXPECT_FALSE(item.value().requires_grad()) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), before.at(item.key()))) << item.key();
  }
}

// The state of a fitted or trained method, loaded into a fresh, unfitted instance of
// another initialisation, gives the same logits bit for bit; for methods that adapt, the
// same adapted prediction (their reset included: the same image twice gives the same).
TEST_P(MethodContract, SaveThenLoadIntoAFreshInstanceGivesIdenticalLogits) {
  auto m = build(GetParam(), 1);
  train_step(*m, 3);
  if (m->contract().adaptation == vlmadapt::Adaptation::Online)  // an online memory that holds something
    for (uint64_t i = 0; i < 3; ++i) predict(*m, batch_for(*m, 6, 20 + i));
  {  // a state no fresh instance starts from (as TPT's prompt from a CoOp run), loaded
    auto moved = m->state();
    torch::manual_seed(8);
    for (auto& [key, t] : moved)
      if (t.is_floating_point()) t = t + 0.01 * torch::randn_like(t);
    m->load_state(moved, "moved state");
  }
  auto state = m->state();
  auto fresh = build(GetParam(), 99, /*fit=*/false);
  fresh->load_state(state, "contract test");
  auto b = batch_for(*m, 6, 4);
  auto expected = predict(*m, b);
  EXPECT_TRUE(torch::equal(expected, predict(*fresh, b)));
  if (m->contract().adaptation == vlmadapt::Adaptation::Online) {
    // The memory carried on from the loaded state is the same, bit for bit, and differs
    // from what an instance without it carries (an image may retrieve itself and give
    // the same answer either way, as DMN's memory does on this tiny model).
    auto unloaded = build(GetParam(), 1);
    predict(*unloaded, b);
    bool any_differs = false;
    const auto carried = fresh->state(), without = unloaded->state();
    for (const auto& [key, t] : m->state()) {
      EXPECT_TRUE(torch::equal(t, carried.at(key))) << key;
      any_differs = any_differs || !torch::equal(t, without.at(key));
    }
    EXPECT_TRUE(any_differs) << "the loaded memory leaves no trace";
  } else if (!state.empty()) {
    // The loaded state is what the prediction rests on: without it the result differs.
    EXPECT_FALSE(torch::equal(expected, predict(*build(GetParam(), 1), b)));
  }
  if (m->contract().adaptation == vlmadapt::Adaptation::Episodic) {
    EXPECT_TRUE(torch::equal(expected, predict(*m, b)));
    EXPECT_TRUE(torch::equal(expected, predict(*fresh, b)));
  }
}

TEST_P(MethodContract, LoadStateRejectsAnotherMethodsState) {
  auto m = build(GetParam(), 1);
  auto state = m->state();
  state["not_a_key_of_any_method"] = torch::zeros({1});
  EXPECT_NE(vt::error_of([&] { m->load_state(state, "other.safetensors"); }).find("other.safetensors: unexpected key"),
            std::string::npos);
}

TEST_P(MethodContract, SameSeedGivesTheSameResult) {
  auto a = build(GetParam(), 5);
  auto b = build(GetParam(), 5);
  train_step(*a, 6);
  train_step(*b, 6);
  auto batch = batch_for(*a, 6, 7);
  auto la = predict(*a, batch), lb = predict(*b, batch);
  // BLAS kernels may pick paths by memory alignment, so allow float rounding only.
  EXPECT_TRUE(torch::allclose(la, lb, 0, 1e-5)) << (la - lb).abs().max().item<double>();
}

INSTANTIATE_TEST_SUITE_P(Registry, MethodContract, ::testing::ValuesIn(vlmadapt::method_names()),
                         [](const auto& info) { return info.param; });

TEST(Registry, HoldsTheBuiltInMethods) {
  auto names = vlmadapt::method_names();
  for (const char* n : {"zeroshot", "linear_probe", "coop", "tpt", "rlcf", "rlcf_image", "zero", "mta", "ctpt", "tda",
                        "dmn", "boostadapter", "dpe", "tip_adapter", "tip_adapter_f", "gda", "lp_pp", "clap", "zpe", "kgcoop",
                        "prograd", "maple", "promptsrc", "clip_lora", "pseudolabel", "ramt"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  EXPECT_THROW(vlmadapt::find_method("no_such_method"), vlmadapt::Error);
}

// ---- method specifics ------------------------------------------------------

TEST(Zeroshot, EnsembleIsTheRenormalisedMeanOfPerTemplateFeatures) {
  auto& clip = shared_clip();
  vlmadapt::Tokenizer tok;
  auto one = vlmadapt::class_text_features(clip, tok, {"dog"}, {"a photo of a {}."});
  auto two = vlmadapt::class_text_features(clip, tok, {"dog"}, {"art of the {}."});
  auto both = vlmadapt::class_text_features(clip, tok, {"dog"}, {"a photo of a {}.", "art of the {}."});
  auto expect = (one + two) / (one + two).norm(2, -1, true);
  EXPECT_TRUE(torch::allclose(both, expect, 1e-5, 1e-6));
  EXPECT_NEAR(both.norm().item<double>(), 1.0, 1e-5);
}

TEST(Coop, ContextOptionsAndPositions) {
  torch::manual_seed(0);
  vlmadapt::methods::CoopOptions o;
  o.prompt.n_ctx = 4;
  using vlmadapt::ClassPosition;
  for (auto pos : {ClassPosition::End, ClassPosition::Middle, ClassPosition::Front}) {
    o.prompt.class_token_position = pos;
    vlmadapt::methods::Coop coop(o);
    coop.setup(task(shared_clip()));
    EXPECT_EQ(coop.learner()->ctx().sizes(), (std::vector<int64_t>{4, 128})) << to_string(pos);
    auto b = batch_for(coop, 3, 1);
    EXPECT_EQ(coop.logits(b).sizes(), (std::vector<int64_t>{3, 10})) << to_string(pos);
  }
  o.prompt.csc = true;
  o.prompt.class_token_position = ClassPosition::End;
  vlmadapt::methods::Coop csc(o);
  csc.setup(task(shared_clip()));
  EXPECT_EQ(csc.learner()->ctx().sizes(), (std::vector<int64_t>{10, 4, 128}));
  // ctx_init sets n_ctx to its word count and ignores csc, as the official code.
  o.prompt.ctx_init = "a photo of a";
  vlmadapt::methods::Coop init(o);
  init.setup(task(shared_clip()));
  EXPECT_EQ(init.learner()->ctx().sizes(), (std::vector<int64_t>{4, 128}));
}

TEST(Coop, InitialisedFromWordsEqualsTheHandWrittenPrompt) {
  // With ctx = embeddings of "a photo of a", CoOp's prompt is exactly that sentence.
  vlmadapt::methods::CoopOptions o;
  o.prompt.ctx_init = "a photo of a";
  vlmadapt::methods::Coop coop(o);
  coop.setup(task(shared_clip()));
  torch::NoGradGuard no_grad;
  auto learned = coop.learner()->text_features();
  auto written = shared_clip()->encode_text(vlmadapt::Tokenizer().tokenize({"a photo of a T-shirt/top.", "a photo of a Trouser."}));
  EXPECT_LT((learned.narrow(0, 0, 2) - written).abs().max().item<double>(), 1e-5);
}

TEST(LinearProbe, SearchesCOnValidationAndSeparatesSeparableData) {
  // Two well separated clusters in feature space: the probe must get them all right.
  torch::manual_seed(0);
  auto centers = torch::randn({10, 64});
  auto make = [&](int64_t n) {
    auto labels = torch::arange(n) % 10;
    return FeatureSet{centers.index_select(0, labels) + 0.05 * torch::randn({n, 64}), labels};
  };
  vlmadapt::methods::LinearProbe probe({});
  probe.setup(task(shared_clip()));
  auto train = make(100), val = make(40), test = make(200);
  probe.fit(train, val);
  Batch b{{}, test.features, test.labels};
  EXPECT_EQ(probe.logits(b).argmax(-1).eq(test.labels).sum().item<int64_t>(), 200);
  EXPECT_GT(probe.chosen_c(), 0);
}

}  // namespace
