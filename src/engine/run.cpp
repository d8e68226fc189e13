#include <vlmadapt/engine/run.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/corruption.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/evaluator.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/engine/trainer.h>
#include <vlmadapt/adapt/tta.h>

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct RunContext {
  Recipe recipe;
  fs::path dir;
  Dataset full, task;  // task: the few-shot split, with the recipe's class subset
  Clip clip{nullptr};
  std::string checkpoint;
  std::unique_ptr<FeatureCache> cache;
  std::shared_ptr<Method> method;
};

void write_json(const fs::path& p, const json& j) { write_file_atomic(p.string(), j.dump(2) + "\n"); }

std::string test_transform_tag(const Recipe& r, int64_t n_px) {
  std::string tag = "test" + std::to_string(n_px);
  if (!r.data.corruption.empty()) tag += "-" + r.data.corruption + std::to_string(r.data.severity);
  return tag;
}

TaskContext task_context(const RunContext& c, const Dataset& data) {
  TaskContext t;
  t.clip = c.clip;
  t.dataset = c.recipe.data.dataset;
  t.classnames = data.classnames;
  t.templates = data.templates;
  t.device = c.clip->logit_scale().device();
  return t;
}

// Data, backbone and method of a run; the split is drawn once and then read back.
RunContext open_run(const Recipe& recipe, const fs::path& dir, bool reuse_split) {
  RunContext c;
  c.recipe = recipe;
  c.dir = dir;
  torch::manual_seed(static_cast<uint64_t>(recipe.data.seed));
  c.full = open_dataset(recipe.data);
  if (!recipe.data.corruption.empty())
    c.full = with_corruption(std::move(c.full), recipe.data.corruption, recipe.data.severity);
  const fs::path split = dir / "split.json";
  Dataset few = reuse_split && fs::exists(split)
                    ? load_split(c.full, split.string())
                    : sample_few_shot(c.full, recipe.data.shots, recipe.data.val_shots, static_cast<uint64_t>(recipe.data.seed));
  if (!reuse_split || !fs::exists(split)) save_split(few, split.string());
  c.task = subsample_classes(few, recipe.data.classes == "new" ? "new" : recipe.data.classes);
  c.checkpoint = resolve_checkpoint(recipe.model.checkpoint);
  LoadOptions lo;
  lo.device = recipe.model.device;
  lo.half = recipe.model.half;
  c.clip = load_clip(c.checkpoint, lo);
  c.cache = std::make_unique<FeatureCache>((fs::path(recipe.output) / ".cache").string(), checkpoint_id(c.checkpoint));
  c.method = make_method(recipe.method, recipe.method_values);
  c.method->setup(task_context(c, c.task));
  return c;
}

EvalSetup eval_setup(RunContext& c, const Dataset& data) {
  EvalSetup s;
  s.method = c.method.get();
  s.clip = c.clip;
  s.dataset = &data;
  s.options = c.recipe.eval;
  s.workers = c.recipe.data.workers;
  s.cache = c.cache.get();
  s.transform_tag = test_transform_tag(c.recipe, c.clip->image_resolution());
  s.out_dir = c.dir.string();
  if (c.method->adapts_per_sample()) {
    TtaViewOptions v;
    v.views = c.recipe.eval.views;
    v.augmix = c.recipe.eval.augmix;
    v.extra_views = c.recipe.eval.extra_views;
    v.n_px = static_cast<int>(c.clip->image_resolution());
    v.seed = static_cast<uint64_t>(c.recipe.data.seed);
    s.views = tta_view_maker(v);
  }
  return s;
}

LoaderOptions feature_loader(const RunContext& c) {
  LoaderOptions o;
  o.n_px = static_cast<int>(c.clip->image_resolution());
  o.batch_size = c.recipe.eval.batch_size;
  o.workers = c.recipe.data.workers;
  return o;
}

json evaluate_splits(RunContext& c, const std::vector<std::string>& splits, std::ostream& log) {
  json metrics;
  for (const auto& split : splits) {
    const auto& items = c.task.split(split);
    if (items.empty()) continue;
    auto m = evaluate(eval_setup(c, c.task), items, split);
    metrics[split] = m;
    log << split << ": top-1 " << m.top1 << "% over " << m.count << " images\n";
  }
  if (c.recipe.data.classes == "base") {  // base-to-new: the same method on the new classes
    Dataset fresh = sample_few_shot(c.full, 0, 0, static_cast<uint64_t>(c.recipe.data.seed));
    Dataset novel = subsample_classes(fresh, "new");
    c.method->setup(task_context(c, novel));
    auto m = evaluate(eval_setup(c, novel), novel.test, "new");
    metrics["base"] = metrics["test"];
    metrics["new"] = m;
    metrics["harmonic_mean"] = harmonic_mean(metrics["base"]["top1"].get<double>(), m.top1);
    log << "new: top-1 " << m.top1 << "%, harmonic mean " << metrics["harmonic_mean"].get<double>() << "\n";
    c.method->setup(task_context(c, c.task));
  }
  return metrics;
}

// A run folder holds one recipe's results: skipping or resuming it under another recipe
// would report numbers the current recipe never produced.
void require_same_recipe(const fs::path& dir, const Recipe& recipe) {
  const auto file = dir / "recipe.ini";
  if (!fs::exists(file)) return;
  auto was = ini_values(read_file(file.string()), file.string()), now = ini_values(recipe.to_ini(), "recipe");
  was.erase("force"), now.erase("force");
  std::string diff;
  int shown = 0;
  for (const auto& [key, value] : now) {
    auto it = was.find(key);
    const std::string old = it == was.end() ? "(absent)" : it->second;
    if (old != value && shown++ < 3) diff += "; " + key + " = " + old + " there, " + value + " now";
  }
  if (!diff.empty())
    throw Error(dir.string() + " holds a run of a different recipe" + diff +
                ". Set force = true to overwrite it, or name = ... for a new folder");
}

}  // namespace

RunSummary run_recipe(const Recipe& recipe, bool resume, std::ostream& log) {
  RunSummary summary;
  const fs::path dir = recipe.run_dir();
  summary.dir = dir.string();
  if (resume || !recipe.force) require_same_recipe(dir, recipe);
  if (fs::exists(dir / "run.json") && !recipe.force && !resume) {
    json run = json::parse(read_file((dir / "run.json").string()));
    if (run.value("status", "") == "finished") {
      log << "skipping finished run " << dir.string() << " (set force = true to rerun)\n";
      summary.skipped = true;
      summary.metrics = json::parse(read_file((dir / "metrics.json").string()));
      return summary;
    }
  }
  if (!resume && fs::exists(dir / "checkpoint")) fs::remove_all(dir / "checkpoint");
  fs::create_directories(dir);
  write_file_atomic((dir / "recipe.ini").string(), recipe.to_ini());
  json run = {{"dataset", recipe.data.dataset}, {"method", recipe.method}, {"recipe", recipe.name},
              {"shots", recipe.data.shots}, {"seed", recipe.data.seed}, {"status", "running"}};
  write_json(dir / "run.json", run);

  RunContext c = open_run(recipe, dir, resume);
  log << "run " << dir.string() << ": " << recipe.method << " on " << recipe.data.dataset << ", "
      << c.task.classnames.size() << " classes, " << c.task.train.size() << " train / " << c.task.val.size()
      << " val / " << c.task.test.size() << " test images\n";
  auto fl = feature_loader(c);
  const std::string tag = test_transform_tag(recipe, c.clip->image_resolution());
  if (c.method->fits())
    c.method->fit(c.cache->features(c.clip, c.task, c.task.train, fl, tag),
                  c.cache->features(c.clip, c.task, c.task.val, fl, tag));

  TrainerSetup ts{c.method.get(), c.clip, &c.task, recipe, (dir / "checkpoint").string(), c.cache.get()};
  Trainer trainer(ts);
  const double loss = trainer.train(resume);
  write_safetensors((dir / "method.safetensors").string(), c.method->state());

  summary.metrics = evaluate_splits(c, {"val", "test"}, log);
  write_json(dir / "metrics.json", summary.metrics);
  run["status"] = "finished";
  run["final_loss"] = loss;
  run["epochs"] = c.method->trainable_parameters().empty() ? 0 : trainer.epochs();
  write_json(dir / "run.json", run);
  return summary;
}

json evaluate_run(const std::string& run_dir, const std::string& split, std::ostream& log) {
  const fs::path dir(run_dir);
  if (!fs::exists(dir / "recipe.ini")) throw Error(run_dir + ": not a run folder (no recipe.ini)");
  if (!fs::exists(dir / "method.safetensors")) throw Error(run_dir + ": run has not finished (no method.safetensors)");
  Recipe recipe = load_recipe({(dir / "recipe.ini").string()});
  RunContext c = open_run(recipe, dir, true);
  const auto state = (dir / "method.safetensors").string();
  c.method->load_state(read_safetensors(state), state);
  return evaluate_splits(c, {split}, log);
}

}  // namespace vlmadapt
