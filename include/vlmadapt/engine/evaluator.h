// The one evaluator, shared by every method: logits over a split, batch by batch
// (frozen features from the cache, or pixels for methods that need them, or one
// test image at a time for test-time adaptation), into the metrics of metrics.h.
#pragma once
#include <functional>
#include <string>

#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/features.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/engine/metrics.h>
#include <vlmadapt/engine/recipe.h>

namespace vlmadapt {

// Builds the views of one test image for test-time adaptation: [V,3,R,R], view 0 the test view.
using ViewMaker = std::function<torch::Tensor(const Dataset& dataset, const Item& item, int64_t index)>;

struct EvalSetup {
  Method* method = nullptr;
  Clip clip{nullptr};
  const Dataset* dataset = nullptr;
  EvalOptions options;
  uint64_t seed = 0;              // with the run index, seeds the stream orders (data.seed)
  int workers = 2;
  FeatureCache* cache = nullptr;  // may be null
  std::string transform_tag;      // cache key of the test transform (corruption included)
  ViewMaker views;                // required for methods that adapt per sample
  std::string out_dir;            // confusion CSV and predictions go here ("" = none)
  // When set, the method scores a larger label space and only these of its columns are
  // the dataset's classes, in label order (ImageNet-A/R's 200 classes of an ImageNet-1k
  // classifier: Dataset::parent_labels).
  std::vector<int64_t> columns;
};

// Metrics of `items` (a split of setup.dataset). Logits whose column count is not the
// dataset's class count (after `columns`) are an error naming both counts. Writes confusion_<tag>.csv and
// predictions_<tag>.jsonl into out_dir when asked.
// The split is a stream (eval.order, eval.runs): an online method sees each run's order
// from the state it had when evaluate() was called, and is left in that state; a method that does not carry state from image to image
// is evaluated once (its predictions do not depend on the order, as each image's views
// are seeded by its place in the split) and its run accuracies and running accuracy are
// read off the same predictions in each order. The confusion matrix, ECE and
// predictions of an online method pool every run (predictions: the first run only).
Metrics evaluate(const EvalSetup& setup, const std::vector<Item>& items, const std::string& tag);

}  // namespace vlmadapt
