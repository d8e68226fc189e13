#include <vlmadapt/engine/run.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/corruption.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/distributed.h>
#include <vlmadapt/engine/evaluator.h>
#include <vlmadapt/engine/pseudolabels.h>
#include <vlmadapt/engine/run_context.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/engine/trainer.h>
#include <vlmadapt/engine/transfer.h>
#include <vlmadapt/adapt/tta.h>

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

void write_json(const fs::path& p, const json& j) { write_file_atomic(p.string(), j.dump(2) + "\n"); }

}  // namespace

json read_json(const fs::path& p) {
  try {
    return json::parse(read_file(p.string()));
  } catch (const json::exception& e) {
    throw Error(p.string() + ": not valid JSON (" + e.what() + ")");
  }
}

std::pair<double, double> seen_unseen_top1(const std::vector<std::vector<int64_t>>& rows,
                                           const std::vector<int64_t>& unseen_classes) {
  std::vector<bool> unseen(rows.size(), false);
  for (int64_t c : unseen_classes) unseen.at(static_cast<size_t>(c)) = true;
  double hit[2] = {0, 0}, total[2] = {0, 0};
  for (size_t c = 0; c < rows.size(); ++c) {
    const int g = unseen[c] ? 1 : 0;
    hit[g] += static_cast<double>(rows[c][c]);
    for (int64_t n : rows[c]) total[g] += static_cast<double>(n);
  }
  return {total[0] > 0 ? 100.0 * hit[0] / total[0] : 0.0, total[1] > 0 ? 100.0 * hit[1] / total[1] : 0.0};
}

json evaluate_context(RunContext& c, const std::string& dir, const std::vector<std::string>& splits, std::ostream& log) {
  json metrics;
  std::vector<std::vector<int64_t>> test_confusion;
  for (const auto& split : splits) {
    const auto& items = c.task.split(split);
    if (items.empty()) continue;
    auto m = evaluate(eval_setup(c, c.task, dir), items, split);
    metrics[split] = m;
    if (split == "test") test_confusion = m.confusion;
    log << split << ": top-1 " << m.top1 << "% over " << m.count << " images";
    if (m.run_top1.size() > 1)
      log << " (mean of " << m.run_top1.size() << " stream orders, std " << m.top1_std << ", worst 10% " << m.tail_top1 << ")";
    log << ", " << m.seconds_per_image << " s per image\n";
  }
  if (!c.task.unlabelled_classes.empty() && metrics.contains("test")) {  // transductive zero-shot
    const auto [seen, unseen] = seen_unseen_top1(test_confusion, c.task.unlabelled_classes);
    metrics["seen"] = seen;
    metrics["unseen"] = unseen;
    metrics["harmonic_mean"] = harmonic_mean(seen, unseen);
    log << "seen classes: top-1 " << seen << "%, unseen: " << unseen << "%, harmonic mean "
        << metrics["harmonic_mean"].get<double>() << "\n";
  }
  if (c.recipe.data.classes == "base" && metrics.contains("test")) {  // base-to-new: the same method on the new classes
    Dataset fresh = sample_few_shot(c.full, 0, 0, static_cast<uint64_t>(c.recipe.data.seed));
    Dataset novel = subsample_classes(fresh, "new");
    c.set_classes(novel);
    auto m = evaluate(eval_setup(c, novel, dir), novel.test, "new");
    metrics["base"] = metrics["test"];
    metrics["new"] = m;
    metrics["harmonic_mean"] = harmonic_mean(metrics["base"]["top1"].get<double>(), m.top1);
    log << "new: top-1 " << m.top1 << "%, harmonic mean " << metrics["harmonic_mean"].get<double>() << "\n";
    c.set_classes(c.task);
  }
  return metrics;
}

namespace {

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
    // A key added since the folder was written reads as absent there: unset now is the same.
    const std::string old = it == was.end() ? (value.empty() ? value : "(absent)") : it->second;
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
  // Distributed (engine/distributed.h): every rank runs the recipe, rank 0 alone writes
  // the run folder; the others read only what a resumed run left there.
  auto& world = dist::world(recipe.model.device);
  const bool main = world.main();
  const auto adaptation = make_method(recipe.method_options())->contract().adaptation;
  if (world.size() > 1 && adaptation == Adaptation::Online)
    throw Error("method " + recipe.method + " adapts online (its state follows the test stream, which one process "
                "must see whole): run it in one process, without vlmadapt launch (WORLD_SIZE=" +
                std::to_string(world.size()) + ")");
  if (world.size() > 1 && !recipe.eval.transfer.empty())
    throw Error("eval.transfer: not supported with several processes yet (WORLD_SIZE=" + std::to_string(world.size()) +
                "); evaluate the transfers afterwards with vlmadapt eval in one process");
  std::unique_ptr<FolderLock> lock;
  if (main) lock = std::make_unique<FolderLock>(dir);  // one writer per run folder
  if (main)
    if (const int removed = remove_temporary_files(dir))
      log << "removed " << removed << " temporary file(s) of a killed run in " << dir.string() << "\n";
  if (main && !resume && fs::exists(dir / "checkpoint")) fs::remove_all(dir / "checkpoint");
  json run = {{"dataset", recipe.data.dataset}, {"method", recipe.method}, {"recipe", recipe.name},
              {"shots", recipe.data.shots}, {"seed", recipe.data.seed}, {"status", "running"}};
  run["adaptation"] = to_string(adaptation);
  if (world.size() > 1) run["world_size"] = world.size();
  if (main) {
    write_file_atomic((dir / "recipe.ini").string(), recipe.to_ini());
    write_json(dir / "run.json", run);
    if (!resume) fs::remove(dir / "split.json");  // a fresh run draws its split again
  }
  // The other ranks draw the same split from the seed (a resumed run: read the saved one).
  const std::string split = main || (resume && fs::exists(dir / "split.json")) ? (dir / "split.json").string() : "";
  RunContext c = open_run_context(recipe, split);
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
  const double loss = c.method->contract().pseudolabels ? train_in_rounds(c, dir.string(), resume, log) : trainer.train(resume);
  run["train_seconds"] = seconds_since(t0);
  if (main) write_safetensors((dir / "method.safetensors").string(), c.method->state());

  summary.metrics = evaluate_context(c, dir.string(), {"val", "test"}, log);
  if (main) write_json(dir / "metrics.json", summary.metrics);
  run["status"] = "finished";
  run["final_loss"] = loss;
  run["epochs"] = c.method->contract().trains ? trainer.epochs() : 0;
  run["selection"] = to_string(recipe.train.selection);
  run["chosen"] = c.method->chosen();
  if (main) write_json(dir / "run.json", run);
  world.barrier("the end of the run");  // no rank leaves while another may still need it
  if (!recipe.eval.transfer.empty()) evaluate_transfers(dir.string(), recipe.eval.transfer, log);
  return summary;
}

RunFolder read_run_folder(const std::string& run_dir) {
  const fs::path dir(run_dir);
  if (!is_dir(dir)) throw Error(run_dir + ": no such run folder");
  for (const char* file : {"recipe.ini", "run.json", "split.json"})
    if (!is_file(dir / file)) throw Error(run_dir + ": not a run folder (no " + file + ")");
  const json run = read_json(dir / "run.json");
  const std::string status = run.is_object() && run.value("status", json()).is_string() ? run["status"].get<std::string>() : "";
  if (status != "finished" || !is_file(dir / "method.safetensors"))
    throw Error(run_dir + ": run has not finished (status \"" + status + "\")");
  RunFolder f;
  f.dir = run_dir;
  f.recipe = load_recipe({(dir / "recipe.ini").string()});
  const json split = read_json(dir / "split.json");
  Dataset classes;
  try {
    classes.classnames = split.at("classnames").get<std::vector<std::string>>();
  } catch (const json::exception&) {
    throw Error((dir / "split.json").string() + ": expected \"classnames\", a list of strings");
  }
  f.classnames = subsample_classes(classes, f.recipe.data.classes).classnames;
  f.state_file = (dir / "method.safetensors").string();
  return f;
}

json evaluate_run(const std::string& run_dir, const std::string& split, std::ostream& log) {
  const fs::path dir(run_dir);
  if (!fs::exists(dir / "recipe.ini")) throw Error(run_dir + ": not a run folder (no recipe.ini)");
  if (!fs::exists(dir / "method.safetensors")) throw Error(run_dir + ": run has not finished (no method.safetensors)");
  Recipe recipe = load_recipe({(dir / "recipe.ini").string()});
  std::unique_ptr<FolderLock> lock;  // it writes the split's confusion matrix and predictions there (rank 0)
  if (dist::world().main()) lock = std::make_unique<FolderLock>(dir);
  RunContext c = open_run_context(recipe, (dir / "split.json").string());
  const auto state = (dir / "method.safetensors").string();
  c.method->load_state(read_safetensors(state), state);
  return evaluate_context(c, run_dir, {split}, log);
}

}  // namespace vlmadapt
