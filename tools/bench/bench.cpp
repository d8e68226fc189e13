#include "bench/bench.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/run_context.h>
#include <vlmadapt/engine/trainer.h>

#include "backbone/fused_tower.h"
#include "bench/memory_meter.h"

namespace vlmadapt {
namespace {

// Median seconds of `reps` calls after one warm-up call, as perf_py.py's timed().
double timed(const std::function<void()>& fn, int reps) {
  fn();
  std::vector<double> ts;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// Multiply-adds x 2 of one ViT image-tower forward pass (0 for ResNets).
double vit_flops(const ClipConfig& c) {
  if (!c.vision_vit) return 0;
  const double grid = c.image_resolution / c.vision_patch_size, t = grid * grid + 1, w = c.vision_width;
  const double layers = c.vision_layers.empty() ? 0 : c.vision_layers.front();
  const double patches = 2 * grid * grid * 3 * c.vision_patch_size * c.vision_patch_size * w;
  const double per_layer = 24 * t * w * w + 4 * t * t * w;  // qkv, out, MLP; scores and mix
  return patches + layers * per_layer + 2 * w * c.embed_dim;
}

// Seconds of encode_image(x) with the fused blocks' matrix products alone (see
// detail::MatrixProductsOnly): the floor that the BLAS sets for this tower and batch.
double products_only_seconds(Clip clip, const torch::Tensor& x, int reps) {
  detail::MatrixProductsOnly products_only;
  torch::NoGradGuard no_grad;
  return timed([&] { clip->encode_image(x); }, reps);
}

double matmul_gflops(int reps) {
  const int64_t n = 2048;
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  const double t = timed([&] { torch::mm(a, b); }, reps);
  return 2.0 * n * n * n / t / 1e9;
}

// Distinct class names of 1 to 4 tokens, as perf_py.py's prompts: class i repeats one
// single-token word (from vocabulary id 500 + i on) 1 + i % 4 times.
Dataset bench_classes(int64_t n_cls) {
  Dataset t;
  t.name = "bench";
  Tokenizer tokenizer;
  int64_t id = 500;
  for (int64_t i = 0; i < n_cls; ++i) {
    std::string word;
    do {
      word = tokenizer.decode({id++});
      while (!word.empty() && word.back() == ' ') word.pop_back();
    } while (word.empty() || tokenizer.encode(word + " " + word).size() != 2);
    std::string name = word;
    for (int64_t k = 0; k < i % 4; ++k) name += " " + word;
    t.classnames.push_back(name);
  }
  t.templates = {"a photo of a {}."};
  return t;
}

nlohmann::json bench_encode(Clip clip, const BenchOptions& o) {
  const int64_t r = clip->image_resolution();
  auto x = torch::randn({o.batch, 3, r, r});
  const double t = timed([&] {
    torch::NoGradGuard no_grad;
    clip->encode_image(x);
  }, o.reps);
  const double flops = vit_flops(clip->config()) * static_cast<double>(o.batch);
  nlohmann::json out = {{"images_per_s", static_cast<double>(o.batch) / t}};
  if (flops > 0) out["gflops"] = flops / t / 1e9;
  out["matmul_gflops"] = matmul_gflops(o.reps);
  out["products_only_images_per_s"] = static_cast<double>(o.batch) / products_only_seconds(clip, x, o.reps);
  return out;
}

nlohmann::json bench_coop(Clip clip, const BenchOptions& o) {
  const Recipe recipe = coop_bench_recipe();
  RunContext c = attach_method(recipe, clip, bench_classes(o.n_cls));
  auto& method = c.method;
  Trainer trainer(TrainerSetup{method.get(), clip, nullptr, recipe, "", nullptr});
  auto optimizer = make_optimizer(recipe.train, method->trainable_parameters());
  const int64_t r = clip->image_resolution();
  auto x = torch::randn({o.batch, 3, r, r});
  auto y = torch::randint(0, o.n_cls, {o.batch}, torch::kLong);
  double loss = 0;
  const double t = timed([&] { loss = trainer.train_step(method_batch(*method, clip, x, y), *optimizer); }, o.reps);
  return {{"seconds_per_step", t}, {"loss", loss}};
}

nlohmann::json bench_tpt(Clip clip, const BenchOptions& o) {
  Recipe recipe;
  recipe.method = "tpt";
  recipe.data.dataset = "bench";
  RunContext c = attach_method(recipe, clip, bench_classes(o.n_cls));
  auto& method = c.method;
  const int64_t r = clip->image_resolution();
  auto views = torch::randn({64, 3, r, r});
  int64_t predicted = -1;
  std::vector<double> encode_seconds;
  const double t = timed([&] {
    Batch b;  // as the evaluator: frozen features of the views, then the method's hook
    b.pixels = views;
    const auto t0 = std::chrono::steady_clock::now();
    {
      torch::NoGradGuard no_grad;
      b.image_features = clip->encode_image(views);
    }
    encode_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    predicted = method->adapt_and_predict(b).argmax(-1).item<int64_t>();
  }, o.reps);
  // Of which the image tower on the views: the median over the timed calls, as the total.
  encode_seconds.erase(encode_seconds.begin());  // the warm-up call
  std::sort(encode_seconds.begin(), encode_seconds.end());
  return {{"seconds_per_image", t}, {"encode_seconds", encode_seconds[encode_seconds.size() / 2]},
          {"encode_products_only_seconds", products_only_seconds(clip, views, o.reps)}, {"prediction", predicted}};
}

// Any method on the views of one test image through the evaluator's stream.
nlohmann::json bench_tta(Clip clip, const BenchOptions& o) {
  Recipe recipe;
  recipe.method = o.method;
  recipe.data.dataset = "bench";
  RunContext c = attach_method(recipe, clip, bench_classes(o.n_cls));
  const bool adapts = c.method->contract().adapts();
  const int64_t r = clip->image_resolution();
  ImageStream stream(*c.method, clip);
  std::vector<double> encode_seconds;
  int64_t predicted = -1, image = 0;
  const double t = timed([&] {
    torch::manual_seed(static_cast<uint64_t>(image++));  // another image each call
    auto views = torch::randn({o.views, 3, r, r});
    const auto t0 = std::chrono::steady_clock::now();
    Batch b = stream.batch(views);
    encode_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (adapts) {
      predicted = stream.predict(std::move(b)).argmax(-1)[0].item<int64_t>();
    } else {
      torch::NoGradGuard no_grad;
      predicted = c.method->logits(b).argmax(-1)[0].item<int64_t>();
    }
  }, o.reps);
  stream.finish();
  encode_seconds.erase(encode_seconds.begin());  // the warm-up call
  std::sort(encode_seconds.begin(), encode_seconds.end());
  return {{"method", o.method}, {"views", o.views}, {"seconds_per_image", t},
          {"encode_seconds", encode_seconds[encode_seconds.size() / 2]}, {"prediction", predicted}};
}

// A training-free method's fit() on random features of n_cls classes x shots images (its
// support views each), with a validation split of min(shots, 4) per class (what the
// searches run on) and, for ZPE-style methods, 10 unlabelled test images per class.
// Methods that also train report one step of the shared loop on a batch of 256.
// --set KEY=VALUE ... as the method's recipe values.
std::map<std::string, std::string> method_values(const BenchOptions& o) {
  std::map<std::string, std::string> values;
  for (const auto& kv : o.sets) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw Error("bench: --set '" + kv + "' is not KEY=VALUE");
    values[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return values;
}

nlohmann::json bench_fit(Clip clip, const BenchOptions& o) {
  Recipe recipe;
  recipe.method = o.method;
  recipe.method_values = method_values(o);
  recipe.data.dataset = "bench";
  RunContext c = attach_method(recipe, clip, bench_classes(o.n_cls));
  const Contract contract = c.method->contract();
  if (!contract.fits) throw Error("bench fit: method " + o.method + " fits nothing (contract().fits is false)");
  const int64_t e = clip->embed_dim(), views = std::max(1, contract.support_views);
  auto labelled = [&](int64_t per_class, int64_t repeats) -> FeatureSet {
    auto labels = torch::arange(o.n_cls).repeat_interleave(per_class).repeat({repeats});
    return {torch::randn({labels.size(0), e}), labels};
  };
  FitData data{contract.support_views < 0 ? labelled(0, 1) : labelled(o.shots, views), views,
               labelled(std::min(o.shots, 4), 1)};
  if (contract.unlabelled_test) data.unlabelled = torch::randn({10 * o.n_cls, e});
  const double fit_seconds = timed([&] { c.method->fit(data); }, o.reps);
  nlohmann::json out = {{"method", o.method}, {"shots", o.shots}, {"support_rows", data.support.features.size(0)},
                        {"val_rows", data.val.features.size(0)}, {"fit_seconds", fit_seconds}};
  for (const auto& [key, value] : c.method->chosen()) out["chosen"][key] = value;
  for (const auto& [key, value] : recipe.method_values) out["set"][key] = value;
  if (contract.trains) {
    TrainerSetup ts{c.method.get(), clip, &c.task, recipe, "", nullptr};
    Trainer trainer(ts);
    auto optimizer = make_optimizer(recipe.train, c.method->trainable_parameters());
    auto batch = labelled(1, 1);
    auto index = torch::randint(batch.labels.size(0), {256}, torch::kLong);
    Batch b{{}, batch.features.index_select(0, index), batch.labels.index_select(0, index)};
    out["train_step_seconds"] = timed([&] { trainer.train_step(b, *optimizer); }, o.reps);
  }
  return out;
}

// One training step of a method on frozen features (random ones), or on random pixels for a
// method that takes pixels (its step then includes the image tower): median seconds over the timed steps
// (after one warm-up step, which also makes the optimizer's buffers) and the largest
// peak of CPU tensor bytes of a timed step above those alive before it (MemoryMeter).
struct StepMeasure {
  double seconds = 0, loss = 0;
  int64_t tensor_bytes = 0;
};

StepMeasure measure_step(Clip clip, const std::string& method, const std::map<std::string, std::string>& values,
                         const BenchOptions& o) {
  Recipe recipe = coop_bench_recipe();
  recipe.method = method;
  recipe.method_values = values;
  RunContext c = attach_method(recipe, clip, bench_classes(o.n_cls));
  const Contract contract = c.method->contract();
  if (!contract.trains) throw Error("bench step: method " + method + " does not train (contract)");
  Trainer trainer(TrainerSetup{c.method.get(), clip, nullptr, recipe, "", nullptr});
  auto optimizer = make_optimizer(recipe.train, c.method->trainable_parameters());
  torch::manual_seed(1);  // the same batch for every method
  Batch b{{}, torch::randn({o.batch, clip->embed_dim()}), torch::randint(0, o.n_cls, {o.batch}, torch::kLong)};
  if (contract.input == Input::Pixels) {  // methods that run the image tower themselves (R-AMT, CLIP-LoRA)
    const int64_t r = clip->image_resolution();
    b = method_batch(*c.method, clip, torch::randn({o.batch, 3, r, r}), b.labels);
  }
  StepMeasure m;
  MemoryMeter meter;
  std::vector<double> ts;
  for (int rep = 0; rep <= o.reps; ++rep) {
    meter.start();
    const auto t0 = std::chrono::steady_clock::now();
    m.loss = trainer.train_step(b, *optimizer);
    if (rep == 0) continue;  // warm-up
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    m.tensor_bytes = std::max(m.tensor_bytes, meter.peak_tensor_bytes_above_start());
  }
  std::sort(ts.begin(), ts.end());
  m.seconds = ts[ts.size() / 2];
  return m;
}

nlohmann::json step_json(const StepMeasure& m) {
  return {{"seconds_per_step", m.seconds}, {"peak_tensor_mb", static_cast<double>(m.tensor_bytes) / (1 << 20)},
          {"loss", m.loss}};
}

// --method's step beside a CoOp step (its defaults: 16 context vectors) in the same process.
nlohmann::json bench_step(Clip clip, const BenchOptions& o) {
  const auto values = method_values(o);
  const StepMeasure coop = measure_step(clip, "coop", {}, o);
  const StepMeasure m = measure_step(clip, o.method, values, o);
  nlohmann::json out = step_json(m);
  out["method"] = o.method;
  for (const auto& [key, value] : values) out["set"][key] = value;
  out["coop"] = step_json(coop);
  out["tensor_memory_ratio"] = static_cast<double>(m.tensor_bytes) / static_cast<double>(std::max<int64_t>(1, coop.tensor_bytes));
  out["time_ratio"] = m.seconds / coop.seconds;
  return out;
}

// One CoOp epoch through the real loop, online and from cached views. Times come from the
// trainer's hooks: the second epoch of each run is timed, and the cache build on its own.
nlohmann::json bench_epoch(Clip clip, const BenchOptions& o) {
  DataOptions d;
  d.dataset = "fashion_mnist";
  Dataset few = sample_few_shot(open_dataset(d), o.shots, 0, 1);
  auto epoch_seconds = [&](int feature_views, double* cache_seconds) {
    Recipe recipe = coop_bench_recipe();
    recipe.data = d;
    recipe.data.shots = o.shots;
    recipe.train.epochs = 2;
    recipe.train.batch_size = o.batch;
    recipe.train.feature_views = feature_views;
    RunContext c = attach_method(recipe, clip, few);
    Trainer trainer(TrainerSetup{c.method.get(), clip, &few, recipe, "", nullptr});
    std::vector<double> ends;
    const auto t0 = std::chrono::steady_clock::now();
    auto since_start = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    trainer.on_epoch_end = [&](int64_t, double) { ends.push_back(since_start()); };
    if (cache_seconds) trainer.on_views_cached = [&] { *cache_seconds = since_start(); };
    trainer.train(false);
    return ends.at(1) - ends.at(0);
  };
  double cache_seconds = 0;
  const double online = epoch_seconds(0, nullptr);
  const double cached = epoch_seconds(o.feature_views, &cache_seconds);
  return {{"online_seconds", online}, {"cached_seconds", cached}, {"speedup", online / cached},
          {"cache_seconds", cache_seconds}, {"images", few.train.size()}, {"classes", few.classnames.size()},
          {"feature_views", o.feature_views}};
}

}  // namespace

Recipe coop_bench_recipe() {
  Recipe recipe;
  recipe.method = "coop";
  recipe.train.optimizer = Optimizer::Sgd;
  recipe.train.lr = 0.002;
  recipe.train.momentum = 0.9;
  recipe.train.weight_decay = 0;
  return recipe;
}

double peak_rss_mb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

nlohmann::json run_bench(const BenchOptions& o) {
  if (o.task != "encode" && o.task != "coop" && o.task != "tpt" && o.task != "epoch" && o.task != "tta" && o.task != "fit" &&
      o.task != "step")
    throw Error("bench: unknown task '" + o.task + "'; expected encode, coop, tpt, epoch, tta, fit or step");
  if (o.n_cls < 1 || o.batch < 1 || o.threads < 1 || o.reps < 1 || o.shots < 1 || o.feature_views < 1 || o.views < 1)
    throw Error("bench: --n-cls, --batch, --threads, --reps, --shots, --feature-views and --views must be at least 1");
  if (o.task == "tta" || o.task == "fit" || o.task == "step") find_method(o.method);  // an unknown method: the error lists the known ones
  torch::set_num_threads(o.threads);
  torch::manual_seed(0);
  Clip clip = o.arch == "default" ? load_clip(resolve_checkpoint("default")) : random_clip(o.arch, 0);
  nlohmann::json out = o.task == "encode" ? bench_encode(clip, o)
                       : o.task == "coop" ? bench_coop(clip, o)
                       : o.task == "tpt"  ? bench_tpt(clip, o)
                       : o.task == "tta"  ? bench_tta(clip, o)
                       : o.task == "fit"  ? bench_fit(clip, o)
                       : o.task == "step" ? bench_step(clip, o)
                                          : bench_epoch(clip, o);
  out["task"] = o.task;
  out["arch"] = o.arch;
  out["n_cls"] = o.n_cls;
  out["batch"] = o.batch;
  out["threads"] = o.threads;
  out["reps"] = o.reps;
  out["peak_rss_mb"] = peak_rss_mb();
  out["engine"] = "libtorch " TORCH_VERSION;
  return out;
}

}  // namespace vlmadapt
