// The evaluator's metrics. Everything is accumulated as integer counts (and per-bin
// confidence sums) so that adding batches one by one gives exactly the numbers of one
// big batch, whatever the batch size.
#include <vlmadapt/engine/metrics.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

namespace vlmadapt {
namespace {

constexpr int kEceBins = 15;

std::string shape_of(const at::Tensor& t) {
  std::ostringstream ss;
  ss << t.sizes();
  return ss.str();
}

// Shapes, dtypes, label range and NaN: the evaluator must fail loudly rather than
// report numbers computed from garbage.
void check_inputs(const at::Tensor& logits, const at::Tensor& labels, int64_t num_classes,
                  size_t num_ids) {
  if (!logits.defined() || logits.dim() != 2 || logits.size(1) != num_classes)
    throw Error("metrics: logits must be [B," + std::to_string(num_classes) + "], got " +
                (logits.defined() ? shape_of(logits) : std::string("an undefined tensor")));
  if (!at::isFloatingType(logits.scalar_type()))
    throw Error("metrics: logits must be a floating-point tensor, got " +
                std::string(c10::toString(logits.scalar_type())));
  const int64_t batch = logits.size(0);
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != batch)
    throw Error("metrics: labels must be [" + std::to_string(batch) + "] to match logits " +
                shape_of(logits) + ", got " +
                (labels.defined() ? shape_of(labels) : std::string("an undefined tensor")));
  if (!at::isIntegralType(labels.scalar_type(), /*includeBool=*/false))
    throw Error("metrics: labels must be an integer (int64) tensor, got " +
                std::string(c10::toString(labels.scalar_type())));
  if (num_ids != 0 && num_ids != static_cast<size_t>(batch))
    throw Error("metrics: " + std::to_string(num_ids) + " sample ids for a batch of " +
                std::to_string(batch) + " (expected one id per sample, or none)");
  if (batch == 0) return;
  if (torch::isnan(logits).any().item<bool>()) {
    const int64_t row = torch::isnan(logits).any(1).nonzero()[0][0].item<int64_t>();
    throw Error("metrics: logits contain NaN (first in row " + std::to_string(row) +
                "); expected finite scores");
  }
  const at::Tensor bad = (labels < 0) | (labels >= num_classes);
  if (bad.any().item<bool>()) {
    const int64_t row = bad.nonzero()[0][0].item<int64_t>();
    throw Error("metrics: label " + std::to_string(labels[row].item<int64_t>()) + " at row " +
                std::to_string(row) + " is outside [0," + std::to_string(num_classes) + ")");
  }
}

// Index of the largest probability; ties go to the lowest class index, so results
// do not depend on how a kernel happens to break ties.
int64_t argmax_row(const double* p, int64_t n) {
  int64_t best = 0;
  for (int64_t j = 1; j < n; ++j)
    if (p[j] > p[best]) best = j;
  return best;
}

// Rank of class `c` in the row under the same order as argmax_row (0 = first).
int64_t rank_of(const double* p, int64_t n, int64_t c) {
  int64_t rank = 0;
  for (int64_t j = 0; j < n; ++j)
    if (p[j] > p[c] || (p[j] == p[c] && j < c)) ++rank;
  return rank;
}

std::vector<int64_t> top_k(const double* p, int64_t n, int64_t k) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) idx[static_cast<size_t>(j)] = j;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [p](int64_t a, int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

// Bins are (i/15, (i+1)/15], right-inclusive as in Guo et al.'s reference code.
int ece_bin(double confidence) {
  const int b = static_cast<int>(std::ceil(confidence * kEceBins)) - 1;
  return std::clamp(b, 0, kEceBins - 1);
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

MetricAccumulator::MetricAccumulator(int64_t num_classes, bool keep_predictions)
    : num_classes_(num_classes),
      keep_predictions_(keep_predictions),
      bin_confidence_(kEceBins, 0.0),
      bin_correct_(kEceBins, 0.0),
      bin_count_(kEceBins, 0) {
  if (num_classes < 1) throw Error("metrics: num_classes must be >= 1, got " + std::to_string(num_classes));
  confusion_.assign(static_cast<size_t>(num_classes), std::vector<int64_t>(static_cast<size_t>(num_classes), 0));
}

void MetricAccumulator::add(const at::Tensor& logits, const at::Tensor& labels,
                            const std::vector<std::string>& ids) {
  check_inputs(logits, labels, num_classes_, ids.size());
  const int64_t batch = logits.size(0), c = num_classes_, k = std::min<int64_t>(5, c);
  // Softmax in double on the CPU: confidences near 1 must not round to exactly 1.
  const at::Tensor probs = logits.detach().to(torch::kCPU, torch::kDouble).softmax(1).contiguous();
  const at::Tensor lab = labels.detach().to(torch::kCPU, torch::kLong).contiguous();
  const double* pp = probs.data_ptr<double>();
  const int64_t* lp = lab.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i) {
    const double* p = pp + i * c;
    const int64_t label = lp[i], pred = argmax_row(p, c);
    const double conf = p[pred];
    // +inf, or a row of only -inf, makes softmax NaN: no meaningful prediction.
    if (std::isnan(conf))
      throw Error("metrics: logits row " + std::to_string(i) + " has no finite maximum (+inf or all -inf)");
    const bool hit = pred == label;
    hits_.push_back(hit);
    correct1_ += hit;
    correct5_ += rank_of(p, c, label) < k;
    ++confusion_[static_cast<size_t>(label)][static_cast<size_t>(pred)];
    const int b = ece_bin(conf);
    bin_confidence_[b] += conf;
    bin_correct_[b] += hit;
    ++bin_count_[b];
    if (keep_predictions_) {
      nlohmann::json line = {{"id", ids.empty() ? std::to_string(count_ + i) : ids[static_cast<size_t>(i)]},
                             {"label", label},
                             {"prediction", pred},
                             {"confidence", conf},
                             {"top5", top_k(p, c, k)}};
      prediction_lines_.push_back(line.dump());
    }
  }
  count_ += batch;
}

namespace {

double mean_per_class(const std::vector<std::vector<int64_t>>& m) {
  double sum = 0;
  int present = 0;
  for (size_t t = 0; t < m.size(); ++t) {
    int64_t row = 0;
    for (int64_t v : m[t]) row += v;
    if (row == 0) continue;
    sum += static_cast<double>(m[t][t]) / static_cast<double>(row);
    ++present;
  }
  return present ? 100.0 * sum / present : 0.0;
}

double macro_f1(const std::vector<std::vector<int64_t>>& m) {
  const size_t n = m.size();
  std::vector<int64_t> row(n, 0), col(n, 0);
  for (size_t t = 0; t < n; ++t)
    for (size_t p = 0; p < n; ++p) {
      row[t] += m[t][p];
      col[p] += m[t][p];
    }
  double sum = 0;
  int present = 0;
  for (size_t c = 0; c < n; ++c) {
    if (row[c] == 0 && col[c] == 0) continue;  // class never seen nor predicted
    ++present;
    const double tp = static_cast<double>(m[c][c]);
    const double precision = col[c] ? tp / static_cast<double>(col[c]) : 0.0;
    const double recall = row[c] ? tp / static_cast<double>(row[c]) : 0.0;
    if (precision + recall > 0) sum += 2 * precision * recall / (precision + recall);
  }
  return present ? 100.0 * sum / present : 0.0;
}

}  // namespace

Metrics MetricAccumulator::result() const {
  Metrics m;
  m.count = count_;
  m.confusion = confusion_;
  if (count_ == 0) return m;  // nothing seen: all metrics stay 0
  const double n = static_cast<double>(count_);
  m.top1 = 100.0 * static_cast<double>(correct1_) / n;
  m.top5 = 100.0 * static_cast<double>(correct5_) / n;
  m.mean_per_class = mean_per_class(confusion_);
  m.macro_f1 = macro_f1(confusion_);
  // ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, i.e. sum_b |correct_b - confsum_b| / N.
  double ece = 0;
  for (int b = 0; b < kEceBins; ++b)
    if (bin_count_[b]) ece += std::abs(bin_correct_[b] - bin_confidence_[b]);
  m.ece = 100.0 * ece / n;
  for (int b = 0; b < kEceBins; ++b) {
    const double count = static_cast<double>(bin_count_[b]);
    m.bin_count.push_back(bin_count_[b]);
    m.bin_confidence.push_back(count ? 100.0 * bin_confidence_[b] / count : 0.0);
    m.bin_accuracy.push_back(count ? 100.0 * bin_correct_[b] / count : 0.0);
  }
  return m;
}

void MetricAccumulator::write_confusion_csv(const std::string& path,
                                            const std::vector<std::string>& classnames) const {
  if (!classnames.empty() && classnames.size() != static_cast<size_t>(num_classes_))
    throw Error(path + ": " + std::to_string(classnames.size()) + " class names for " +
                std::to_string(num_classes_) + " classes (expected one per class, or none)");
  auto name = [&](size_t i) { return classnames.empty() ? std::to_string(i) : classnames[i]; };
  std::string out = "true\\predicted";
  for (size_t p = 0; p < confusion_.size(); ++p) out += "," + csv_field(name(p));
  out += "\n";
  for (size_t t = 0; t < confusion_.size(); ++t) {
    out += csv_field(name(t));
    for (int64_t v : confusion_[t]) out += "," + std::to_string(v);
    out += "\n";
  }
  write_file_atomic(path, out);
}

void MetricAccumulator::write_predictions_jsonl(const std::string& path) const {
  if (!keep_predictions_)
    throw Error(path + ": per-sample predictions were not kept (construct MetricAccumulator with keep_predictions = true)");
  std::string out;
  for (const auto& line : prediction_lines_) out += line + "\n";
  write_file_atomic(path, out);
}

double harmonic_mean(double a, double b) { return a + b == 0 ? 0.0 : 2 * a * b / (a + b); }

void to_json(nlohmann::json& j, const Metrics& m) {
  j = nlohmann::json{{"count", m.count},   {"top1", m.top1},         {"top5", m.top5},
                     {"mean_per_class", m.mean_per_class}, {"macro_f1", m.macro_f1},
                     {"ece", m.ece}};
  if (!m.bin_count.empty())
    j["reliability"] = {{"count", m.bin_count}, {"confidence", m.bin_confidence}, {"accuracy", m.bin_accuracy}};
  if (!m.order.empty()) j["order"] = m.order;
  if (!m.run_top1.empty()) {
    j["runs"] = m.run_top1.size();
    j["run_top1"] = m.run_top1;
    j["top1_std"] = m.top1_std;
    j["tail_top1"] = m.tail_top1;
  }
  if (!m.running_top1.empty()) j["stream"] = {{"position", m.stream_positions}, {"running_top1", m.running_top1}};
  if (m.seconds_per_image > 0) j["seconds_per_image"] = m.seconds_per_image;
  if (m.peak_memory_mb > 0) j["peak_memory_mb"] = m.peak_memory_mb;
}

}  // namespace vlmadapt
