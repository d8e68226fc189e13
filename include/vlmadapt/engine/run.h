// One run of a recipe, end to end: data and few-shot split, backbone, method,
// training-free fitting on train/val features, the shared training loop, and the
// evaluator on val and test (base and new classes under base-to-new). Everything a
// run produces lives in its folder: recipe.ini, split.json, method.safetensors,
// checkpoint/, metrics.json, confusion_*.csv, run.json.
#pragma once
#include <iosfwd>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <vlmadapt/engine/recipe.h>

namespace vlmadapt {

struct RunSummary {
  std::string dir;
  bool skipped = false;      // an existing finished run, not forced
  nlohmann::json metrics;    // contents of metrics.json
};

// Trains (when the method learns) and evaluates `recipe`. With `resume`, continues from
// the run's latest epoch checkpoint.
RunSummary run_recipe(const Recipe& recipe, bool resume, std::ostream& log);

// A finished run folder as the commands that reuse its learned state read it (eval --run,
// transfer, soup): its recipe, the classes its method was set up for, its state file.
// A run folder's JSON file (run.json, split.json, metrics.json); throws vlmadapt::Error
// naming the file when it cannot be read or parsed.
nlohmann::json read_json(const std::filesystem::path& path);

struct RunFolder {
  std::string dir;
  Recipe recipe;
  std::vector<std::string> classnames;  // split.json's, after data.classes (base-to-new: the base half)
  std::string state_file;               // <dir>/method.safetensors
};
// Throws vlmadapt::Error naming the folder when it is missing, not a run folder, or has
// not finished.
RunFolder read_run_folder(const std::string& dir);

struct RunContext;
// Evaluates the context's method as it is on `splits` of its task (confusion matrices
// into `dir`); under base-to-new (data.classes = base) also on the new classes, giving
// "base", "new" and "harmonic_mean". The method is set up for the task again after.
// Under transductive zero-shot (data.paradigm = trzsl), "seen", "unseen" and their
// "harmonic_mean" over the test split's classes (generalised: every class is a candidate).
nlohmann::json evaluate_context(RunContext& c, const std::string& dir, const std::vector<std::string>& splits,
                                std::ostream& log);

// Top-1 (percent) of the rows of a confusion matrix [true][predicted] whose class is not
// in `unseen_classes`, and of those that are.
std::pair<double, double> seen_unseen_top1(const std::vector<std::vector<int64_t>>& confusion,
                                           const std::vector<int64_t>& unseen_classes);

// Evaluates a finished run again on `split` (test, val), from its folder alone.
nlohmann::json evaluate_run(const std::string& run_dir, const std::string& split, std::ostream& log);

// vlmadapt tta --stream: adapts to and classifies each image of `inputs` (files, folders,
// or "-" for paths read line by line from `in`) with the recipe's method and classes,
// printing one JSON line per image to `out` as soon as it is done: {"file", "top":
// [{"class", "label", "score"}, ...up to 5], "seconds"}. An image that cannot be read gets
// {"file", "error"} and the stream goes on. Returns the number of failed images.
// With `state_file`, an online method's state is read from it when it exists (it must
// come from the same method, model and class set) and written back when the stream ends,
// so that a stream may stop and go on.
int stream_predictions(const Recipe& recipe, const std::vector<std::string>& inputs, std::istream& in,
                       std::ostream& out, std::ostream& log, const std::string& state_file = "");


}  // namespace vlmadapt
