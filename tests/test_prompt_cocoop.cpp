// CoCoOp (methods/cocoop.h) and PRE (methods/pre.h) on the tiny ViT fixture: what they
// learn, their logits against naive references and CoOp, the recompute path's gradients
// and memory, and their option errors. The registry's contract tests (test_methods.cpp)
// cover both too.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/backbone/checkpoint.h>

#include "bench/bench.h"
#include "bench/memory_meter.h"
#include "methods/cocoop.h"
#include "methods/coop.h"
#include "methods/pre.h"
#include "test_support.h"
#include "test_util.h"

namespace vt = vlmadapt::testing;
using vlmadapt::Method;
using vlmadapt::methods::Cocoop;
using vlmadapt::methods::CocoopOptions;
using vlmadapt::methods::Coop;
using vlmadapt::methods::CoopOptions;
using vlmadapt::methods::Pre;
using vlmadapt::methods::PreEncoderType;
using vlmadapt::methods::PreOptions;

namespace {

const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
const int64_t kC = static_cast<int64_t>(kClasses.size());

vlmadapt::Clip& clip() { return vt::tiny_vit_clip(); }

vlmadapt::TaskContext task() {
  vlmadapt::TaskContext t;
  t.clip = clip();
  t.classnames = kClasses;
  return t;
}

// Frozen image features of n random images (as the cache holds them: not normalised).
torch::Tensor features(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  const int64_t r = clip()->image_resolution();
  return clip()->encode_image(torch::randn({n, 3, r, r}));
}

vlmadapt::Batch batch(int64_t n, uint64_t seed) { return {{}, features(n, seed), torch::arange(n) % kC}; }

template <class M, class O>
std::unique_ptr<M> make(const O& options, uint64_t seed = 1) {
  torch::manual_seed(seed);
  auto m = std::make_unique<M>(options);
  m->setup(task());
  return m;
}

CocoopOptions cocoop_options(int64_t kept_graphs) {
  CocoopOptions o;
  o.kept_graphs = kept_graphs;
  return o;
}

// CoOp with CoCoOp's and PRE's prompt ("a photo of a" + class) and the given context.
std::unique_ptr<Coop> coop_with(const torch::Tensor& ctx) {
  CoopOptions o;
  o.prompt.ctx_init = "a photo of a";
  auto coop = make<Coop>(o);
  torch::NoGradGuard no_grad;
  coop->learner()->ctx().copy_(ctx);
  return coop;
}

// The gradients of every trainable parameter for the cross-entropy of a batch.
std::map<std::string, torch::Tensor> gradients(Method& m, const vlmadapt::Batch& b,
                                               const std::function<torch::Tensor()>& logits) {
  for (auto& p : m.parameters()) p.mutable_grad() = torch::Tensor();
  torch::nn::functional::cross_entropy(logits(), b.labels).backward();
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : m.named_parameters(true))
    if (item.value().grad().defined()) out[item.key()] = item.value().grad().clone();
  return out;
}

void expect_same_gradients(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b,
                           const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [key, g] : a) {
    EXPECT_GT(g.abs().max().item<double>(), 0) << what << ": " << key << " gets no gradient";
    EXPECT_TRUE(torch::allclose(g, b.at(key), 1e-4, 1e-6))
        << what << ": " << key << " differs by " << (g - b.at(key)).abs().max().item<double>();
  }
}

// Logits agree within 1e-5 on the cosine scale (before exp(logit_scale), about 100 on
// trained models: float rounding of the scaled logits is about 1e-5 already).
void expect_same_logits(const torch::Tensor& got, const torch::Tensor& expected, const std::string& what) {
  const auto scale = clip()->logit_scale().exp();
  const double diff = ((got - expected) / scale).abs().max().item<double>();
  EXPECT_LT(diff, 1e-5) << what;
}

// CoCoOp's logits the official way, from its parameters: pi(x) = linear2(relu(linear1(x)))
// on the normalised feature, added to every context token; every image's prompts
// concatenated ([B*C,L,D]) and encoded whole by encode_text_embeddings; one dot product per image.
torch::Tensor naive_cocoop_logits(Cocoop& m, const torch::Tensor& image_features) {
  auto p = m.named_parameters(true);
  auto image = image_features / image_features.norm(2, -1, true);
  auto hidden = torch::relu(torch::matmul(image, p["meta_net.linear1.weight"].t()) + p["meta_net.linear1.bias"]);
  auto pi = torch::matmul(hidden, p["meta_net.linear2.weight"].t()) + p["meta_net.linear2.bias"];  // [B,D]
  auto ctx = p["prompt_learner.ctx"].unsqueeze(0) + pi.unsqueeze(1);                                 // [B,n_ctx,D]
  std::vector<torch::Tensor> embeddings, eots;
  for (int64_t i = 0; i < ctx.size(0); ++i) {
    auto [e, eot] = m.learner()->prompts(ctx[i]);
    embeddings.push_back(e);
    eots.push_back(eot);
  }
  auto text = clip()->encode_text_embeddings(torch::cat(embeddings), torch::cat(eots)).view({ctx.size(0), kC, -1});
  text = text / text.norm(2, -1, true);
  return clip()->logit_scale().exp() * torch::einsum("be,bce->bc", {image, text});
}

std::set<std::string> trainable_names(Method& m) {
  std::set<std::string> names;
  for (const auto& item : m.named_parameters(true))
    if (item.value().requires_grad()) names.insert(item.key());
  return names;
}

}  // namespace

TEST(Cocoop, ShapesOfItsParametersAndLogits) {
  auto m = make<Cocoop>(CocoopOptions());
  EXPECT_EQ(m->learner()->ctx().sizes(), (std::vector<int64_t>{4, 128}));  // "a photo of a", text width 128
  const auto p = m->named_parameters(true);
  EXPECT_EQ(p["meta_net.linear1.weight"].sizes(), (std::vector<int64_t>{4, 64}));  // embed 64 -> 64/16
  EXPECT_EQ(p["meta_net.linear2.weight"].sizes(), (std::vector<int64_t>{128, 4}));  // -> the text width
  EXPECT_EQ(trainable_names(*m), (std::set<std::string>{"prompt_learner.ctx", "meta_net.linear1.weight",
                                                        "meta_net.linear1.bias", "meta_net.linear2.weight",
                                                        "meta_net.linear2.bias"}));
  auto b = batch(6, 2);
  EXPECT_EQ(m->conditional_ctx(b.image_features).sizes(), (std::vector<int64_t>{6, 4, 128}));
  EXPECT_EQ(m->logits(b).sizes(), (std::vector<int64_t>{6, kC}));
}

TEST(Pre, ShapesOfItsEncoders) {
  PreOptions o;
  auto lstm1 = make<Pre>(o);
  EXPECT_EQ(lstm1->learner()->ctx().sizes(), (std::vector<int64_t>{4, 128}));
  EXPECT_EQ(trainable_names(*lstm1),
            (std::set<std::string>{"prompt_learner.ctx", "encoder.lstm.weight_ih_l0", "encoder.lstm.weight_hh_l0",
                                   "encoder.lstm.bias_ih_l0", "encoder.lstm.bias_hh_l0",
                                   "encoder.lstm.weight_ih_l0_reverse", "encoder.lstm.weight_hh_l0_reverse",
                                   "encoder.lstm.bias_ih_l0_reverse", "encoder.lstm.bias_hh_l0_reverse"}));
  // D/2 = 64 per direction: 4 gates x 64 rows.
  EXPECT_EQ(lstm1->named_parameters(true)["encoder.lstm.weight_ih_l0"].sizes(), (std::vector<int64_t>{256, 128}));
  o.module_type = PreEncoderType::Lstm2;
  EXPECT_EQ(make<Pre>(o)->named_parameters(true)["encoder.lstm.weight_ih_l1_reverse"].sizes(),
            (std::vector<int64_t>{256, 128}));  // the second layer reads both directions
  o.module_type = PreEncoderType::Mlp2;  // the same two layers, applied twice
  EXPECT_EQ(trainable_names(*make<Pre>(o)),
            (std::set<std::string>{"prompt_learner.ctx", "encoder.linear1.weight", "encoder.linear1.bias",
                                   "encoder.linear2.weight", "encoder.linear2.bias"}));
  EXPECT_EQ(make<Pre>(o)->logits(batch(3, 2)).sizes(), (std::vector<int64_t>{3, kC}));
}

// One SGD step: every learned tensor moves, the CLIP gets no gradient and stays as it was.
TEST(PromptMethods, LearnTheirOwnParametersOnlyAndLeaveTheClipUnchanged) {
  std::vector<std::shared_ptr<Method>> methods = {make<Cocoop>(CocoopOptions()), make<Pre>(PreOptions())};
  PreOptions mlp;
  mlp.module_type = PreEncoderType::Mlp1;
  methods.push_back(make<Pre>(mlp));
  auto clip_before = clip()->weights();
  for (auto& [k, v] : clip_before) v = v.clone();
  for (auto& m : methods) {
    std::map<std::string, torch::Tensor> before;
    for (const auto& item : m->named_parameters(true)) before[item.key()] = item.value().clone();
    torch::optim::SGD opt(m->trainable_parameters(), torch::optim::SGDOptions(0.01));
    m->loss(batch(4, 3)).backward();
    opt.step();
    for (const auto& item : m->named_parameters(true))
      EXPECT_FALSE(torch::equal(item.value(), before.at(item.key()))) << item.key() << " did not learn";
  }
  for (const auto& item : clip()->named_parameters(true)) {
    EXPECT_FALSE(item.value().requires_grad()) << item.key();
    EXPECT_FALSE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), clip_before.at(item.key()))) << item.key();
  }
}

TEST(Cocoop, LogitsAndGradientsEqualTheNaiveConcatenatedPrompts) {
  auto b = batch(5, 4);
  auto naive = make<Cocoop>(CocoopOptions());
  auto recompute = make<Cocoop>(cocoop_options(0));  // every image encoded again in backward
  auto kept = make<Cocoop>(cocoop_options(5));       // every graph kept
  auto mixed = make<Cocoop>(cocoop_options(2));      // images 0, 1 kept, 2-4 again
  {
    torch::NoGradGuard no_grad;  // the frozen passes (fused) against the module-by-module one
    expect_same_logits(recompute->logits(b), naive_cocoop_logits(*naive, b.image_features), "frozen passes");
  }
  expect_same_logits(recompute->logits(b), naive_cocoop_logits(*naive, b.image_features), "with graphs");
  auto g_naive = gradients(*naive, b, [&] { return naive_cocoop_logits(*naive, b.image_features); });
  auto g_recompute = gradients(*recompute, b, [&] { return recompute->logits(b); });
  auto g_kept = gradients(*kept, b, [&] { return kept->logits(b); });
  EXPECT_EQ(g_naive.size(), 5u);  // ctx and the meta-net's four tensors
  expect_same_gradients(g_naive, g_recompute, "recompute");
  expect_same_gradients(g_naive, g_kept, "graphs kept");
  expect_same_gradients(g_naive, gradients(*mixed, b, [&] { return mixed->logits(b); }), "2 graphs kept");
  CocoopOptions chunked = cocoop_options(0);
  chunked.text_chunk = 3;  // 10 classes in passes of 3, 3, 3, 1
  auto c = make<Cocoop>(chunked);
  expect_same_gradients(g_naive, gradients(*c, b, [&] { return c->logits(b); }), "text_chunk 3");
}

// With recompute a step holds one image's text pass at a time (two with the default of one
// kept graph): its peak memory stays near a CoOp step's, while keeping every image's graph
// grows with the batch.
TEST(Cocoop, RecomputeKeepsAStepsMemoryNearCoops) {
  auto b = batch(8, 5);
  auto step_peak = [&](Method& m) {
    vlmadapt::MemoryMeter meter;
    m.loss(b).backward();
    return meter.peak_tensor_bytes_above_start();
  };
  auto recompute = make<Cocoop>(cocoop_options(0));
  auto one_kept = make<Cocoop>(CocoopOptions());
  auto kept = make<Cocoop>(cocoop_options(8));
  auto coop = coop_with(recompute->learner()->ctx());
  const int64_t r = step_peak(*recompute), o = step_peak(*one_kept), k = step_peak(*kept), c = step_peak(*coop);
  EXPECT_LT(r * 3, k) << "recompute " << r << " bytes, graphs kept " << k;
  EXPECT_LT(o * 3, k) << "one graph kept " << o << " bytes, all kept " << k;
  EXPECT_LE(r, 2 * c) << "recompute " << r << " bytes, CoOp " << c;
  EXPECT_LE(o, 3 * c) << "one graph kept " << o << " bytes, CoOp " << c;
}

TEST(Cocoop, ZeroMetaNetOutputGivesCoopsLogits) {
  auto m = make<Cocoop>(CocoopOptions());
  {
    torch::NoGradGuard no_grad;
    m->learner()->ctx().add_(0.05 * torch::randn_like(m->learner()->ctx()));  // not the initial words
  }
  auto coop = coop_with(m->learner()->ctx());
  auto b = batch(6, 6);
  torch::NoGradGuard no_grad;
  auto expected = coop->logits(b);
  EXPECT_FALSE(torch::allclose(m->logits(b), expected, 0, 1e-3));  // the meta-net's shift matters
  for (auto& p : m->meta_net()[2]->parameters()) p.zero_();      // linear2: pi(x) = 0
  expect_same_logits(m->logits(b), expected, "zero meta-net");
}

TEST(Pre, ZeroEncoderOutputGivesCoopsLogits) {
  for (auto type : {PreEncoderType::Lstm1, PreEncoderType::Lstm2, PreEncoderType::Mlp1, PreEncoderType::Mlp2}) {
    PreOptions o;
    o.module_type = type;
    auto m = make<Pre>(o);
    auto coop = coop_with(m->learner()->ctx());
    auto b = batch(6, 7);
    torch::NoGradGuard no_grad;
    auto expected = coop->logits(b);
    const auto name = vlmadapt::to_string(type);
    EXPECT_FALSE(torch::allclose(m->logits(b), expected, 0, 1e-3)) << name << ": the encoder changes nothing";
    // All-zero weights: an LSTM's cell input tanh(0) = 0 keeps c = h = 0; an MLP gives 0.
    for (auto& p : m->encoder()->parameters()) p.zero_();
    expect_same_logits(m->logits(b), expected, name);
  }
}

// lstm1 by hand: h_t = o * tanh(c_t), c_t = f * c_{t-1} + i * g, gates (i, f, g, o) from
// W_ih x_t + b_ih + W_hh h_{t-1} + b_hh; forward over the tokens 0..n-1, reverse over
// n-1..0; E(ctx)_t = [h_fwd_t, h_rev_t] + ctx_t.
TEST(Pre, Lstm1IsABidirectionalLstmOverTheContextTokensPlusTheResidual) {
  auto m = make<Pre>(PreOptions());
  auto p = m->encoder()->named_parameters(true);
  auto ctx = m->learner()->ctx().detach();
  const int64_t n = ctx.size(0), h = ctx.size(1) / 2;
  auto direction = [&](const std::string& suffix, bool reverse) {
    auto w_ih = p["lstm.weight_ih_l0" + suffix], w_hh = p["lstm.weight_hh_l0" + suffix];
    auto b = p["lstm.bias_ih_l0" + suffix] + p["lstm.bias_hh_l0" + suffix];
    auto hs = torch::zeros({n, h}), hprev = torch::zeros({h}), c = torch::zeros({h});
    for (int64_t k = 0; k < n; ++k) {
      const int64_t t = reverse ? n - 1 - k : k;
      auto gates = torch::mv(w_ih, ctx[t]) + torch::mv(w_hh, hprev) + b;
      auto i = torch::sigmoid(gates.narrow(0, 0, h)), f = torch::sigmoid(gates.narrow(0, h, h));
      auto g = torch::tanh(gates.narrow(0, 2 * h, h)), o = torch::sigmoid(gates.narrow(0, 3 * h, h));
      c = f * c + i * g;
      hprev = o * torch::tanh(c);
      hs[t].copy_(hprev);
    }
    return hs;
  };
  torch::NoGradGuard no_grad;
  auto expected = torch::cat({direction("", false), direction("_reverse", true)}, 1) + ctx;
  auto got = m->encoder()->forward(ctx);
  EXPECT_TRUE(torch::allclose(got, expected, 0, 1e-5)) << (got - expected).abs().max().item<double>();
}

TEST(Pre, Mlp2AppliesTheSameLayersTwiceAndResidualAddsCtx) {
  PreOptions o;
  o.module_type = PreEncoderType::Mlp2;
  auto m = make<Pre>(o);
  o.residual = false;
  auto plain = make<Pre>(o);
  auto p = m->encoder()->named_parameters(true);
  auto mlp = [&](const torch::Tensor& x) {
    return torch::matmul(torch::relu(torch::matmul(x, p["linear1.weight"].t()) + p["linear1.bias"]),
                         p["linear2.weight"].t()) + p["linear2.bias"];
  };
  torch::NoGradGuard no_grad;
  for (auto& item : plain->encoder()->named_parameters(true)) item.value().copy_(p[item.key()]);
  auto ctx = m->learner()->ctx();
  EXPECT_TRUE(torch::allclose(m->encoder()->forward(ctx), mlp(mlp(ctx)) + ctx, 0, 1e-5));
  EXPECT_TRUE(torch::allclose(plain->encoder()->forward(ctx), mlp(mlp(ctx)), 0, 1e-5));
}

TEST(PromptLearner, RecomputeGivesTheSameFeaturesAndGradients) {
  vlmadapt::PromptLearnerOptions o;
  o.n_ctx = 4;
  torch::manual_seed(3);
  vlmadapt::PromptLearner learner(clip(), vlmadapt::Tokenizer(), o, 0);
  learner->set_classes(kClasses);
  auto weights = torch::randn({kC, clip()->embed_dim()});
  auto run = [&](bool recompute) {
    learner->recompute = recompute;
    learner->ctx().mutable_grad() = torch::Tensor();
    auto f = learner->text_features();
    (f * weights).sum().backward();
    return std::make_pair(f.detach(), learner->ctx().grad().clone());
  };
  auto [f_kept, g_kept] = run(false);
  auto [f_re, g_re] = run(true);
  EXPECT_TRUE(torch::allclose(f_kept, f_re, 0, 1e-5));
  EXPECT_GT(g_kept.abs().max().item<double>(), 0);
  EXPECT_TRUE(torch::allclose(g_kept, g_re, 1e-4, 1e-6)) << (g_kept - g_re).abs().max().item<double>();
}

TEST(PromptOptions, BadValuesGiveErrorsNamingTheKey) {
  auto error = [](const std::string& method, const std::string& key, const std::string& value) {
    return vt::error_of([&] { vlmadapt::make_method(method, {{key, value}}); });
  };
  EXPECT_NE(error("cocoop", "cocoop.n_ctx", "0").find("cocoop.n_ctx"), std::string::npos);
  EXPECT_NE(error("cocoop", "cocoop.kept_graphs", "-1").find("cocoop.kept_graphs"), std::string::npos);
  EXPECT_NE(error("pre", "pre.n_ctx", "0").find("pre.n_ctx"), std::string::npos);
  EXPECT_NE(error("pre", "pre.bottleneck", "0").find("pre.bottleneck"), std::string::npos);
  const auto type = error("pre", "pre.module_type", "transformer");
  EXPECT_NE(type.find("pre.module_type"), std::string::npos) << type;
  EXPECT_NE(type.find("lstm1"), std::string::npos) << type;  // the choices are listed
  // Built in code, past the option checks: the prompt learner names the key.
  CocoopOptions o;
  o.prompt.ctx_init.clear();
  o.prompt.n_ctx = 0;
  EXPECT_NE(vt::error_of([&] { make<Cocoop>(o); }).find("n_ctx"), std::string::npos);
}

// vlmadapt bench step on the built-in model: the method's step beside CoOp's, options from --set.
TEST(BenchStep, MeasuresAStepBesideCoopsWithTheMethodsOptions) {
  vlmadapt::BenchOptions o;
  o.task = "step";
  o.arch = "default";
  o.n_cls = 5;
  o.batch = 4;
  o.reps = 1;
  o.method = "cocoop";
  o.sets = {"cocoop.kept_graphs=0"};
  const auto recomputed = vlmadapt::run_bench(o);
  EXPECT_GT(recomputed.at("seconds_per_step").get<double>(), 0);
  EXPECT_GT(recomputed.at("coop").at("peak_tensor_mb").get<double>(), 0);
  EXPECT_NEAR(recomputed.at("tensor_memory_ratio").get<double>(),
              recomputed.at("peak_tensor_mb").get<double>() / recomputed.at("coop").at("peak_tensor_mb").get<double>(),
              1e-9);
  EXPECT_EQ(recomputed.at("set").at("cocoop.kept_graphs"), "0");
  o.sets = {"cocoop.kept_graphs=4"};  // every image's graph kept: more memory
  EXPECT_GT(vlmadapt::run_bench(o).at("peak_tensor_mb").get<double>(), recomputed.at("peak_tensor_mb").get<double>());
  o.sets = {"cocoop.kept_graphs"};
  EXPECT_NE(vt::error_of([&] { vlmadapt::run_bench(o); }).find("not KEY=VALUE"), std::string::npos);
  o.sets.clear();
  o.method = "zeroshot";
  EXPECT_NE(vt::error_of([&] { vlmadapt::run_bench(o); }).find("does not train"), std::string::npos);
}
