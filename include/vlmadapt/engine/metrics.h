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
};

class MetricAccumulator {
 public:
  explicit MetricAccumulator(int64_t num_classes, bool keep_predictions = false);
  // logits [B,C] (any scale; softmax is taken for confidence), labels [B].
  // `ids` name the samples for per-sample predictions (may be empty).
  void add(const at::Tensor& logits, const at::Tensor& labels, const std::vector<std::string>& ids = {});
  Metrics result() const;
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
};

double harmonic_mean(double a, double b);
void to_json(nlohmann::json& j, const Metrics& m);

}  // namespace vlmadapt
