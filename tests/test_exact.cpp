// The speed-ups are exact: the shared-prefix text pass, the parallel text features with
// gradients, and the CoOp and TPT steps as the benchmark runs them all equal a
// straightforward computation (whole 77-token prompts, module by module, one thread)
// within fp32 rounding, gradients included.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "bench/bench.h"
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/engine/trainer.h>

#include "methods/coop.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
using namespace vlmadapt;

namespace {

const std::vector<std::string> kClasses = {"dog", "golden retriever", "cat", "tench", "ballpoint pen",
                                           "sports car", "cafe au lait", "t-shirt", "bird's nest"};

Clip& tiny() {
  static Clip clip = load_clip(vt::tiny_vit());
  return clip;
}

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

// Runs `fn` module by module on one thread: the straightforward computation.
template <class F>
auto straightforward(F&& fn) {
  set_fused_inference(false);
  const int threads = at::get_num_threads();
  torch::set_num_threads(1);
  auto out = fn();
  torch::set_num_threads(threads);
  set_fused_inference(true);
  return out;
}

// CoOp's prompts as its reference code builds them: "X X .. X name." tokenised to 77,
// the context written over the X positions, the whole sequence through the tower.
torch::Tensor reference_text_features(Clip& clip, const torch::Tensor& ctx, const std::vector<std::string>& names) {
  std::string xs;
  for (int64_t i = 0; i < ctx.size(0); ++i) xs += i ? " X" : "X";
  std::vector<std::string> texts;
  for (const auto& n : names) texts.push_back(xs + " " + n + ".");
  auto tokens = Tokenizer().tokenize(texts);
  auto emb = clip->embed_tokens(tokens);
  const int64_t n_ctx = ctx.size(0);
  auto prompts = torch::cat({emb.narrow(1, 0, 1), ctx.unsqueeze(0).expand({emb.size(0), -1, -1}),
                             emb.narrow(1, 1 + n_ctx, 77 - 1 - n_ctx)}, 1);
  return clip->encode_text_embeddings(prompts, tokens.argmax(-1));
}

PromptLearner learner_for(Clip& clip, int n_ctx, int64_t chunk) {
  torch::manual_seed(3);
  PromptLearner learner(clip, Tokenizer(), PromptLearnerOptions{n_ctx, "", false, ClassPosition::End, 0.5}, 0);
  learner->set_classes(kClasses);
  learner->chunk = chunk;
  return learner;
}

}  // namespace

TEST(Exact, PrefixedTextEqualsWholePrompts) {
  Clip& clip = tiny();
  torch::manual_seed(1);
  const int64_t w = clip->text_width(), p = 6, s = 9, n = 5;
  auto prefix = (torch::randn({p, w}) * 0.3).requires_grad_(true);
  auto suffixes = (torch::randn({n, s, w}) * 0.3).requires_grad_(true);
  auto eot = torch::tensor(std::vector<int64_t>{6, 8, 14, 9, 11});  // counted from the prefix's start
  auto prefixed = clip->encode_text_prefixed(prefix, suffixes, eot);
  auto whole = straightforward([&] {
    return clip->encode_text_embeddings(torch::cat({prefix.unsqueeze(0).expand({n, -1, -1}), suffixes}, 1), eot);
  });
  EXPECT_LT(rel_diff(prefixed, whole), 1e-5);
  auto weights = torch::randn_like(whole);
  auto g1 = torch::autograd::grad({prefixed}, {prefix, suffixes}, {weights});
  auto g2 = torch::autograd::grad({whole}, {prefix, suffixes}, {weights});
  EXPECT_LT(rel_diff(g1[0], g2[0]), 1e-4);
  EXPECT_LT(rel_diff(g1[1], g2[1]), 1e-4);
  // An end token inside the prefix cannot be served from it.
  EXPECT_THROW(clip->encode_text_prefixed(prefix, suffixes, eot - 3), Error);
  EXPECT_THROW(clip->encode_text_prefixed(prefix, suffixes, eot + 1), Error);  // 15: past the suffixes
}

TEST(Exact, PrefixedInferenceEqualsWholePrompts) {
  // Without gradients the shared-prefix pass runs fused: one group, several groups (more
  // than 1,600 rows) and one group per thread.
  Clip& clip = tiny();
  torch::NoGradGuard no_grad;
  torch::manual_seed(2);
  const int64_t w = clip->text_width(), p = 5, s = 9;
  for (int64_t n : {7, 400}) {
    auto prefix = torch::randn({p, w}) * 0.3;
    auto suffixes = torch::randn({n, s, w}) * 0.3;
    auto eot = torch::randint(p, p + s, {n}, torch::kLong);
    auto whole = straightforward([&] {
      return clip->encode_text_embeddings(torch::cat({prefix.unsqueeze(0).expand({n, -1, -1}), suffixes}, 1), eot);
    });
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      EXPECT_LT(rel_diff(clip->encode_text_prefixed(prefix, suffixes, eot), whole), 1e-5) << n << " prompts";
    }
    EXPECT_LT(rel_diff(straightforward([&] { return clip->encode_text_prefixed(prefix, suffixes, eot); }), whole),
              1e-5);
  }
  torch::set_num_threads(2);
}

TEST(Exact, TextFeaturesAndGradientsEqualTheReferencePrompts) {
  Clip& clip = tiny();
  for (int64_t chunk : {0, 4}) {  // graphs kept, or chunks encoded again in backward
    for (int threads : {1, 2}) {
      torch::set_num_threads(threads);
      auto learner = learner_for(clip, 4, chunk);
      auto ctx = learner->ctx();
      auto fast = learner->text_features();
      auto ref = straightforward([&] { return reference_text_features(clip, ctx, kClasses); });
      EXPECT_LT(rel_diff(fast, ref), 1e-5) << chunk << " " << threads;
      auto weights = torch::randn_like(ref);
      auto g_fast = torch::autograd::grad({fast}, {ctx}, {weights})[0];
      auto g_ref = torch::autograd::grad({ref}, {ctx}, {weights})[0];
      EXPECT_LT(rel_diff(g_fast, g_ref), 1e-4) << chunk << " " << threads;
      torch::NoGradGuard no_grad;  // and the fused inference pass without gradients
      EXPECT_LT(rel_diff(learner->text_features(), ref), 1e-5);
    }
  }
  torch::set_num_threads(2);
}

TEST(Exact, CoopStepAsBenchmarkedEqualsTheReference) {
  // bench coop: the registered method's loss through Trainer::train_step, then SGD.
  Clip& clip = tiny();
  torch::manual_seed(5);
  auto method = make_method("coop", {{"coop.n_ctx", "16"}});
  TaskContext task;
  task.clip = clip;
  task.classnames = kClasses;
  method->setup(task);
  auto ctx0 = method->trainable_parameters()[0].detach().clone();
  Batch b;
  {
    torch::NoGradGuard no_grad;
    b.image_features = clip->encode_image(torch::randn({8, 3, 32, 32}));
  }
  b.labels = torch::arange(8) % static_cast<int64_t>(kClasses.size());
  const Recipe recipe = coop_bench_recipe();
  Trainer trainer(TrainerSetup{method.get(), clip, nullptr, recipe, "", nullptr});
  auto optimizer = make_optimizer(recipe.train, method->trainable_parameters());
  const double loss = trainer.train_step(b, *optimizer);

  // perf_py.py's step: normalised features, exp(logit_scale) * cosines, cross-entropy.
  auto ctx = ctx0.clone().requires_grad_(true);
  auto ref_loss = straightforward([&] {
    auto f = b.image_features / b.image_features.norm(2, -1, true);
    auto t = reference_text_features(clip, ctx, kClasses);
    t = t / t.norm(2, -1, true);
    return torch::cross_entropy_loss(clip->logit_scale().exp() * f.matmul(t.t()), b.labels);
  });
  EXPECT_NEAR(loss, ref_loss.item<double>(), 1e-5 * std::abs(ref_loss.item<double>()));
  auto grad = torch::autograd::grad({ref_loss}, {ctx})[0];
  // SGD's first step with momentum: ctx1 = ctx0 - lr * grad.
  auto moved = ctx0 - method->trainable_parameters()[0].detach();
  EXPECT_LT(rel_diff(moved, recipe.train.lr * grad), 1e-4);
}

TEST(Exact, TptPredictionsEqualTheReference) {
  // bench tpt: the registered method's adapt_and_predict on 64 views; the reference is
  // perf_py.py's step: AdamW on a fresh ctx, the 10% most confident views, the entropy of
  // their mean probability, one step, the prediction on view 0.
  Clip& clip = tiny();
  TaskContext task;
  task.clip = clip;
  task.classnames = kClasses;
  auto method = make_method("tpt");
  method->setup(task);
  auto init = clip->embed_tokens(Tokenizer().tokenize({"a photo of a"}))[0].narrow(0, 1, 4).detach();
  for (uint64_t image = 0; image < 4; ++image) {
    torch::manual_seed(100 + image);
    Batch views;
    views.pixels = torch::randn({64, 3, 32, 32});
    {
      torch::NoGradGuard no_grad;
      views.image_features = clip->encode_image(views.pixels);
    }
    auto fast = method->adapt_and_predict(views);
    auto ref = straightforward([&] {
      auto ctx = init.clone().requires_grad_(true);
      torch::optim::AdamW opt({ctx}, torch::optim::AdamWOptions(5e-3).weight_decay(0.01));
      auto f = views.image_features / views.image_features.norm(2, -1, true);
      auto text = [&] {
        auto t = reference_text_features(clip, ctx, kClasses);
        return t / t.norm(2, -1, true);
      };
      auto logits = clip->logit_scale().exp() * f.matmul(text().t());
      auto entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1);
      auto keep = logits.index_select(0, entropy.argsort().narrow(0, 0, 6));
      auto avg = keep.log_softmax(-1).logsumexp(0) - std::log(6.0);
      auto loss = -(avg.exp() * avg).sum();
      opt.zero_grad();
      loss.backward();
      opt.step();
      torch::NoGradGuard no_grad;
      return (clip->logit_scale().exp() * f.narrow(0, 0, 1).matmul(text().t())).detach();
    });
    EXPECT_LT(rel_diff(fast, ref), 1e-4) << "image " << image;
    EXPECT_EQ(fast.argmax(-1).item<int64_t>(), ref.argmax(-1).item<int64_t>()) << "image " << image;
  }
}
