// The wiring every run shares, built from a recipe once: the frozen backbone on its
// device, the data and the task (few-shot split and class subset), the method set up
// for the task, its feature cache and its test-time views. `vlmadapt train`, `eval
// --run`, `tta --stream` and the bench start from one of these.
#pragma once
#include <memory>
#include <string>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/tta.h>
#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/features.h>
#include <vlmadapt/engine/evaluator.h>
#include <vlmadapt/engine/recipe.h>

namespace vlmadapt {

struct RunContext {
  Recipe recipe;
  std::string checkpoint;  // the resolved model.checkpoint
  Clip clip{nullptr};
  Dataset full;            // the whole dataset, corruption applied
  Dataset task;            // what the method is set up for: the few-shot split, the recipe's classes
  std::shared_ptr<Method> method;
  std::unique_ptr<FeatureCache> cache;  // under <output>/.cache

  torch::Device device() const;
  // The method's view of `data` (its class names and templates) on this backbone.
  TaskContext task_context(const Dataset& data) const;
  // Sets the method up for `data`'s classes (base-to-new switches to the new ones).
  void set_classes(const Dataset& data);
  // The views of each test image: eval.views for methods that adapt, else the test view.
  TtaViewOptions view_options() const;
  // How frozen features of the test view are computed (eval batch size and workers).
  LoaderOptions test_loader() const;
  // Frozen features of the test view of `items` of `data`, through the cache if there is
  // one (benchmarks' and tests' contexts have none and compute).
  FeatureSet test_features(const Dataset& data, const std::vector<Item>& items);
};

// How the evaluator scores the context's method on `data` (one of its splits), writing
// confusion matrices (and predictions) into `out_dir`.
EvalSetup eval_setup(const RunContext& c, const Dataset& data, const std::string& out_dir);

// The feature-cache tag of the test view: resolution and corruption.
std::string test_transform_tag(const Recipe& recipe, int64_t n_px);

// What the method's fit() gets (FitData): the support set (few-shot train and
// data.support, as the method's support views), the validation split when
// train.selection = val, the unlabelled test features when the contract asks for them.
// Needs the context's feature cache.
FitData fit_data(RunContext& c);

// The backbone of recipe.model on its device.
Clip load_model(const ModelOptions& model, std::string* resolved = nullptr);

// A run's context. The few-shot split is read from `split_file` when it exists, else
// drawn from data.seed and written there ("" = drawn, not written).
RunContext open_run_context(const Recipe& recipe, const std::string& split_file);

// A context over the class names of the recipe (data.classes; no split drawn): streams of images.
RunContext open_class_context(const Recipe& recipe);

// A context on a given backbone and task (benchmarks, tests): the method of the recipe,
// set up for `task`; no feature cache.
RunContext attach_method(const Recipe& recipe, Clip clip, Dataset task);

}  // namespace vlmadapt
