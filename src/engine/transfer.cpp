#include <vlmadapt/engine/transfer.h>

#include <algorithm>
#include <filesystem>
#include <ostream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/data/corruption.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/run_context.h>

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

DataOptions transfer_target(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  if (files.empty()) throw Error("transfer: give a dataset recipe for the target (recipes/datasets/<name>.ini)");
  return load_recipe(files, overrides).data;
}

std::string transfer_name(const DataOptions& target) {
  std::string name = target.dataset;
  if (!target.corruption.empty()) name += "_" + target.corruption + std::to_string(target.severity);
  if (target.classes != "all") name += "_" + target.classes;
  return name;
}

namespace {

std::string shape_text(const torch::Tensor& t) { return c10::str(t.sizes()); }

// The state's tensors with a dimension of the run's class count: what a different class
// count cannot reuse (named in errors; a heuristic, as a dimension may match by chance).
std::string class_sized_keys(const TensorMap& state, int64_t classes) {
  std::string out;
  for (const auto& [key, t] : state)
    for (int64_t d = 0; d < t.dim(); ++d)
      if (t.size(d) == classes) {
        out += (out.empty() ? "" : ", ") + ("'" + key + "' " + shape_text(t));
        break;
      }
  return out;
}

// ImageNet's variants score the run's ImageNet classifier on their columns; anything else
// sets the method up with the target's own class names.
bool scores_parent_columns(const RunFolder& run, const Dataset& target) {
  if (target.parent_labels.empty() || run.recipe.data.dataset != "imagenet" || run.recipe.data.classes != "all")
    return false;
  const auto top = *std::max_element(target.parent_labels.begin(), target.parent_labels.end());
  return top < static_cast<int64_t>(run.classnames.size());
}

Dataset open_target(const DataOptions& data) {
  Dataset full = open_dataset(data);
  if (!data.corruption.empty()) full = with_corruption(std::move(full), data.corruption, data.severity);
  Dataset task = subsample_classes(full, data.classes);
  if (task.test.empty()) throw Error(data.dataset + ": no test images to evaluate the transfer on");
  return task;
}

// The run's recipe with the target's data: the run's shots and seed stay (a method may size
// itself by them; the seed draws test-time views), the classes are the target's.
Recipe target_recipe(const RunFolder& run, const DataOptions& target) {
  Recipe r = run.recipe;
  r.data = target;
  r.data.shots = run.recipe.data.shots;
  r.data.seed = run.recipe.data.seed;
  return r;
}

json transfer_run_json(const RunFolder& run, const DataOptions& target, int64_t classes, bool parent) {
  const Recipe& r = run.recipe;
  return {{"dataset", target.dataset}, {"method", r.method}, {"recipe", r.name}, {"shots", r.data.shots},
          {"seed", r.data.seed}, {"status", "finished"}, {"kind", "transfer"}, {"classes", classes},
          {"scored_as", parent ? "columns of the run's classes (parent_labels)" : "the target's class names"},
          {"source", {{"run", run.dir}, {"dataset", r.data.dataset}, {"classes", r.data.classes},
                      {"class_count", run.classnames.size()}}}};
}

}  // namespace

TransferResult evaluate_transfer(const std::string& run_dir, const DataOptions& target, const std::string& name,
                                 std::ostream& log) {
  const RunFolder run = read_run_folder(run_dir);
  const std::string folder = name.empty() ? transfer_name(target) : name;
  if (folder.empty() || folder == "." || folder == ".." || folder.find('/') != std::string::npos)
    throw Error("transfer: '" + folder + "' cannot name a folder under " + run_dir + "/transfer");
  const Dataset task = open_target(target);
  const bool parent = scores_parent_columns(run, task);
  Dataset classes = task;  // what the method is set up for
  if (parent) classes.classnames = run.classnames;

  const std::string what = "run " + run_dir + " (" + run.recipe.method + ", learned on " +
                           std::to_string(run.classnames.size()) + " classes of " + run.recipe.data.dataset +
                           ") on " + folder + " (" + std::to_string(task.classnames.size()) + " classes): ";
  std::string checkpoint;
  Clip clip = load_model(run.recipe.model, &checkpoint);
  const TensorMap state = read_safetensors(run.state_file);
  RunContext c;
  try {  // a fresh method sized by the target's classes, then the run's state, strictly
    c = attach_method(target_recipe(run, target), clip, classes);
    c.method->load_state(state, run.state_file);
  } catch (const Error& e) {
    throw Error(what + e.what());
  }
  c.checkpoint = checkpoint;
  c.cache = std::make_unique<FeatureCache>((fs::path(run.recipe.output) / ".cache").string(), checkpoint_id(checkpoint));

  TransferResult result;
  result.dir = (fs::path(run_dir) / "transfer" / folder).string();
  FolderLock lock(result.dir);
  fs::remove(fs::path(result.dir) / "run.json");  // finished again only once this evaluation is
  EvalSetup s = eval_setup(c, task, result.dir);
  if (parent) s.columns = task.parent_labels;
  try {
    result.metrics["test"] = evaluate(s, task.test, "test");
  } catch (const Error& e) {
    const auto n = static_cast<int64_t>(run.classnames.size());
    const std::string keys = n == int64_t(task.classnames.size()) ? "" : class_sized_keys(state, n);
    throw Error(what + e.what() + (keys.empty() ? "" : "; the state's tensors sized by the run's classes: " + keys));
  }
  write_file_atomic((fs::path(result.dir) / "metrics.json").string(), result.metrics.dump(2) + "\n");
  const json r = transfer_run_json(run, target, static_cast<int64_t>(task.classnames.size()), parent);
  write_file_atomic((fs::path(result.dir) / "run.json").string(), r.dump(2) + "\n");
  log << "transfer " << folder << ": top-1 " << result.metrics["test"]["top1"].get<double>() << "% over "
      << task.test.size() << " images -> " << result.dir << "\n";
  return result;
}

std::vector<TransferResult> evaluate_transfers(const std::string& run_dir, const std::vector<std::string>& targets,
                                               std::ostream& log) {
  std::vector<TransferResult> out;
  for (const auto& file : targets) out.push_back(evaluate_transfer(run_dir, transfer_target({file}), "", log));
  return out;
}

}  // namespace vlmadapt
