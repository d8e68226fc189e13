// Cross-dataset transfer and domain generalisation (PROMPT_LEARNERS.md 9.3): a finished
// run's learned state evaluated, without further training, on another dataset's test
// split, with the prompts or weights applied to that dataset's class names.
//
// The method is built from the run's recipe, set up with the target's classes and given
// the run's state strictly (Method::load_state), so a state sized by the run's classes
// (class-specific context, a linear probe's weights) or by another option is an error
// naming the run, the key and both shapes. ImageNet's test-only variants (imagenet_a,
// imagenet_r, imagenet_v2, imagenet_sketch) after an ImageNet run on all its classes are
// scored as the paper's protocol does: the run's 1000-class classifier restricted to the
// variant's classes (Dataset::parent_labels), so even a class-specific state transfers.
//
// Results go to <run>/transfer/<name>/: run.json (the target, the source run),
// metrics.json ({"test": ...}) and confusion_test.csv; `vlmadapt report` reads them.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <vlmadapt/data/dataset.h>

namespace vlmadapt {

struct TransferResult {
  std::string dir;        // <run>/transfer/<name>
  nlohmann::json metrics;  // {"test": Metrics}
};

// The [data] options of a target: dataset recipes composed in order, then "data.key=value"
// overrides (any other key of a recipe is read and checked, but not used).
DataOptions transfer_target(const std::vector<std::string>& files, const std::vector<std::string>& overrides = {});

// The folder name of a target: the dataset, then _<corruption><severity> and _<classes>
// when set ("imagenet_r", "caltech101_gaussian_noise3", "dtd_new").
std::string transfer_name(const DataOptions& target);

// Evaluates the learned state of `run_dir` on `target`'s test split into
// <run_dir>/transfer/<name> (name "" = transfer_name(target)).
TransferResult evaluate_transfer(const std::string& run_dir, const DataOptions& target, const std::string& name,
                                 std::ostream& log);

// Every dataset recipe of `targets` (eval.transfer), each on its own, in order.
std::vector<TransferResult> evaluate_transfers(const std::string& run_dir, const std::vector<std::string>& targets,
                                               std::ostream& log);

}  // namespace vlmadapt
