#include <vlmadapt/engine/run.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/corruption.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/evaluator.h>
#include <vlmadapt/engine/run_context.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/engine/trainer.h>
#include <vlmadapt/adapt/tta.h>

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

void write_json(const fs::path& p, const json& j) { write_file_atomic(p.string(), j.dump(2) + "\n"); }

// Where a run keeps what it made besides its context.
struct Run {
  RunContext c;
  fs::path dir;
};

EvalSetup eval_setup(Run& run, const Dataset& data) {
  RunContext& c = run.c;
  EvalSetup s;
  s.method = c.method.get();
  s.clip = c.clip;
  s.dataset = &data;
  s.options = c.recipe.eval;
  s.seed = static_cast<uint64_t>(c.recipe.data.seed);
  s.workers = c.recipe.data.workers;
  s.cache = c.cache.get();
  s.transform_tag = test_transform_tag(c.recipe, c.clip->image_resolution());
  s.out_dir = run.dir.string();
  if (c.method->contract().adapts()) s.views = tta_view_maker(c.view_options());
  return s;
}

json evaluate_splits(Run& run, const std::vector<std::string>& splits, std::ostream& log) {
  RunContext& c = run.c;
  json metrics;
  for (const auto& split : splits) {
    const auto& items = c.task.split(split);
    if (items.empty()) continue;
    auto m = evaluate(eval_setup(run, c.task), items, split);
    metrics[split] = m;
    log << split << ": top-1 " << m.top1 << "% over " << m.count << " images";
    if (m.run_top1.size() > 1)
      log << " (mean of " << m.run_top1.size() << " stream orders, std " << m.top1_std << ", worst 10% " << m.tail_top1 << ")";
    log << ", " << m.seconds_per_image << " s per image\n";
  }
  if (c.recipe.data.classes == "base") {  // base-to-new: the same method on the new classes
    Dataset fresh = sample_few_shot(c.full, 0, 0, static_cast<uint64_t>(c.recipe.data.seed));
    Dataset novel = subsample_classes(fresh, "new");
    c.set_classes(novel);
    auto m = evaluate(eval_setup(run, novel), novel.test, "new");
    metrics["base"] = metrics["test"];
    metrics["new"] = m;
    metrics["harmonic_mean"] = harmonic_mean(metrics["base"]["top1"].get<double>(), m.top1);
    log << "new: top-1 " << m.top1 << "%, harmonic mean " << metrics["harmonic_mean"].get<double>() << "\n";
    c.set_classes(c.task);
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
  FolderLock lock(dir);  // one writer per run folder
  if (const int removed = remove_temporary_files(dir))
    log << "removed " << removed << " temporary file(s) of a killed run in " << dir.string() << "\n";
  if (!resume && fs::exists(dir / "checkpoint")) fs::remove_all(dir / "checkpoint");
  write_file_atomic((dir / "recipe.ini").string(), recipe.to_ini());
  json run = {{"dataset", recipe.data.dataset}, {"method", recipe.method}, {"recipe", recipe.name},
              {"shots", recipe.data.shots}, {"seed", recipe.data.seed}, {"status", "running"}};
  run["adaptation"] = to_string(make_method(recipe.method_options())->contract().adaptation);
  write_json(dir / "run.json", run);

  if (!resume) fs::remove(dir / "split.json");  // a fresh run draws its split again
  Run r{open_run_context(recipe, (dir / "split.json").string()), dir};
  RunContext& c = r.c;
  log << "run " << dir.string() << ": " << recipe.method << " on " << recipe.data.dataset << ", "
      << c.task.classnames.size() << " classes, " << c.task.train.size() << " train / " << c.task.val.size()
      << " val / " << c.task.test.size() << " test images\n";
  const auto seconds_since = [](std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto t0 = std::chrono::steady_clock::now();
  if (c.method->contract().fits || !recipe.data.support.empty()) {
    FitData data = fit_data(c);
    run["feature_seconds"] = seconds_since(t0);  // frozen features: computed once, cached, shared by methods
    t0 = std::chrono::steady_clock::now();
    c.method->fit(data);
  }
  run["fit_seconds"] = seconds_since(t0);

  TrainerSetup ts{c.method.get(), c.clip, &c.task, recipe, (dir / "checkpoint").string(), c.cache.get()};
  Trainer trainer(ts);
  t0 = std::chrono::steady_clock::now();
  const double loss = trainer.train(resume);
  run["train_seconds"] = seconds_since(t0);
  write_safetensors((dir / "method.safetensors").string(), c.method->state());

  summary.metrics = evaluate_splits(r, {"val", "test"}, log);
  write_json(dir / "metrics.json", summary.metrics);
  run["status"] = "finished";
  run["final_loss"] = loss;
  run["epochs"] = c.method->contract().trains ? trainer.epochs() : 0;
  run["selection"] = to_string(recipe.train.selection);
  run["chosen"] = c.method->chosen();
  write_json(dir / "run.json", run);
  return summary;
}

json evaluate_run(const std::string& run_dir, const std::string& split, std::ostream& log) {
  const fs::path dir(run_dir);
  if (!fs::exists(dir / "recipe.ini")) throw Error(run_dir + ": not a run folder (no recipe.ini)");
  if (!fs::exists(dir / "method.safetensors")) throw Error(run_dir + ": run has not finished (no method.safetensors)");
  Recipe recipe = load_recipe({(dir / "recipe.ini").string()});
  FolderLock lock(dir);  // it writes the split's confusion matrix and predictions there
  Run r{open_run_context(recipe, (dir / "split.json").string()), dir};
  const auto state = (dir / "method.safetensors").string();
  r.c.method->load_state(read_safetensors(state), state);
  return evaluate_splits(r, {split}, log);
}

}  // namespace vlmadapt
