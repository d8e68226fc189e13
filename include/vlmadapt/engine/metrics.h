// The evaluator's metrics, shared by every method: top-1, top-5, mean per-class
// accuracy, macro-F1, expected calibration error (15 bins), the confusion matrix
// and per-sample predictions.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace vlmadapt {

struct Metrics {
  int64_t count = 0;
  double top1 = 0, top5 = 0;          // percent
  double mean_per_class = 0;          // percent, over classes present in the labels
  double macro_f1 = 0;                // percent, over classes present in labels or predictions
  double ece = 0;                     // percent, 15 equal-width confidence bins
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
  // The reliability diagram: per confidence bin, its predictions, their mean confidence
  // and their accuracy (percent; 0 for an empty bin).
  std::vector<int64_t> bin_count;
  std::vector<double> bin_confidence, bin_accuracy;
  // Set by the evaluator. A test split is a stream (eval.order): one top-1 per stream
  // order (eval.runs), their sample standard deviation and the mean of the worst 10%
  // (expected tail accuracy); top1 is their mean. running_top1[i] is the accuracy over
  // the first stream_positions[i] images, averaged over the runs.
  std::string order;  // the stream order: "shuffled", "by_class", "dirichlet 0.01"
  std::vector<double> run_top1;
  double top1_std = 0, tail_top1 = 0;
  std::vector<int64_t> stream_positions;
  std::vector<double> running_top1;
  double seconds_per_image = 0;  // evaluation wall time per image and run
  double peak_memory_mb = 0;     // the process's peak resident memory when it ended
};

class MetricAccumulator {
 public:
  explicit MetricAccumulator(int64_t num_classes, bool keep_predictions = false);
  // logits [B,C] (any scale; softmax is taken for confidence), labels [B].
  // `ids` name the samples for per-sample predictions (may be empty).
  void add(const at::Tensor& logits, const at::Tensor& labels, const std::vector<std::string>& ids = {});
  Metrics result() const;
  // 1 for each sample whose top-1 was right, in the order they were added.
  const std::vector<uint8_t>& hits() const { return hits_; }
  // CSV with a header row of predicted class names and one row per true class.
  void write_confusion_csv(const std::string& path, const std::vector<std::string>& classnames) const;
  // One JSON line per sample: id, label, prediction, confidence, top-5.
  void write_predictions_jsonl(const std::string& path) const;

 private:
  int64_t num_classes_;
  bool keep_predictions_;
  int64_t count_ = 0, correct1_ = 0, correct5_ = 0;
  std::vector<std::vector<int64_t>> confusion_;
  std::vector<double> bin_confidence_, bin_correct_;
  std::vector<int64_t> bin_count_;
  std::vector<std::string> prediction_lines_;
  std::vector<uint8_t> hits_;
};

double harmonic_mean(double a, double b);
void to_json(nlohmann::json& j, const Metrics& m);

}  // namespace vlmadapt
