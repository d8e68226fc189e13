// MetricAccumulator on small cases whose numbers are worked out by hand in the comments.
#include "test_util.h"
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/engine/metrics.h>
#include <vlmadapt/core/progress.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace vt = vlmadapt::testing;
using vlmadapt::Error;
using vlmadapt::MetricAccumulator;
using vlmadapt::Metrics;

namespace {

at::Tensor labels_of(std::vector<int64_t> v) { return torch::tensor(v, torch::kLong); }

// Logits whose argmax is `pred` for each row (one-hot times 5).
at::Tensor one_hot_logits(const std::vector<int64_t>& pred, int64_t classes) {
  auto t = torch::zeros({int64_t(pred.size()), classes});
  for (size_t i = 0; i < pred.size(); ++i) t[int64_t(i)][pred[i]] = 5.0;
  return t;
}

// A 2-class row [log(p/(1-p)), 0]: softmax gives class 0 with confidence p.
std::vector<float> two_class_row(double p) { return {float(std::log(p / (1 - p))), 0.0f}; }

using vlmadapt::testing::error_of;

}  // namespace

TEST(Metrics, Top1AndTop5) {
  // Descending scores: class j has rank j. Row labels 0 (rank 0), 5 (rank 5, outside
  // the top 5), 4 (rank 4, inside the top 5); the last row predicts its label 1.
  auto logits = torch::tensor({5.f, 4.f, 3.f, 2.f, 1.f, 0.f, 5.f, 4.f, 3.f, 2.f, 1.f, 0.f,
                               5.f, 4.f, 3.f, 2.f, 1.f, 0.f, 0.f, 9.f, 0.f, 0.f, 0.f, 0.f})
                    .reshape({4, 6});
  MetricAccumulator acc(6);
  acc.add(logits, labels_of({0, 5, 4, 1}));
  const Metrics m = acc.result();
  EXPECT_EQ(m.count, 4);
  EXPECT_DOUBLE_EQ(m.top1, 50.0);  // rows 0 and 3
  EXPECT_DOUBLE_EQ(m.top5, 75.0);  // all but row 1
}

TEST(Metrics, Top5IsTopCWithFewerThanFiveClasses) {
  MetricAccumulator acc(3);
  acc.add(torch::tensor({3.f, 2.f, 1.f, 3.f, 2.f, 1.f}).reshape({2, 3}), labels_of({2, 0}));
  EXPECT_DOUBLE_EQ(acc.result().top1, 50.0);
  EXPECT_DOUBLE_EQ(acc.result().top5, 100.0);
}

TEST(Metrics, MeanPerClassMacroF1AndConfusion) {
  // (label, prediction): (0,0) (0,0) (0,1) (1,1) (1,2). Class 2 is predicted, never a label.
  // confusion rows: [2 1 0] [0 1 1] [0 0 0]
  // per-class recall over labelled classes: 2/3, 1/2 -> mean 58.333...
  // F1: class 0 P=1 R=2/3 -> 0.8; class 1 P=1/2 R=1/2 -> 0.5; class 2 P=0 R=0 -> 0
  //     macro over the 3 classes seen in labels or predictions -> 1.3/3 = 43.333...
  MetricAccumulator acc(3);
  acc.add(one_hot_logits({0, 0, 1, 1, 2}, 3), labels_of({0, 0, 0, 1, 1}));
  const Metrics m = acc.result();
  EXPECT_DOUBLE_EQ(m.top1, 60.0);
  EXPECT_NEAR(m.mean_per_class, 100.0 * (2.0 / 3 + 0.5) / 2, 1e-9);
  EXPECT_NEAR(m.macro_f1, 100.0 * 1.3 / 3, 1e-9);
  const std::vector<std::vector<int64_t>> want = {{2, 1, 0}, {0, 1, 1}, {0, 0, 0}};
  EXPECT_EQ(m.confusion, want);
}

TEST(Metrics, MacroF1SkipsClassesNeverSeen) {
  // 4 classes, only class 0 and 1 appear: both perfectly classified -> 100, not 50.
  MetricAccumulator acc(4);
  acc.add(one_hot_logits({0, 1}, 4), labels_of({0, 1}));
  EXPECT_DOUBLE_EQ(acc.result().macro_f1, 100.0);
  EXPECT_DOUBLE_EQ(acc.result().mean_per_class, 100.0);
}

TEST(Metrics, ExpectedCalibrationError) {
  // Confidences 0.9 (right), 0.9 (wrong), 0.7 (right), 0.7 (right).
  // Bin (13/15,14/15] holds the 0.9s: acc 0.5, conf 0.9; bin (10/15,11/15] the 0.7s: acc 1, conf 0.7.
  // ECE = 2/4*|0.5-0.9| + 2/4*|1-0.7| = 0.2 + 0.15 = 0.35 -> 35 %.
  std::vector<float> v;
  for (double p : {0.9, 0.9, 0.7, 0.7})
    for (float x : two_class_row(p)) v.push_back(x);
  MetricAccumulator acc(2);
  acc.add(torch::tensor(v).reshape({4, 2}), labels_of({0, 1, 0, 0}));
  EXPECT_NEAR(acc.result().ece, 35.0, 1e-4);
}

TEST(Metrics, PerfectlyCalibratedIsZeroEce) {
  // Uniform logits over 2 classes: confidence 0.5, and half the predictions are right.
  MetricAccumulator acc(2);
  acc.add(torch::zeros({4, 2}), labels_of({0, 1, 0, 1}));
  EXPECT_DOUBLE_EQ(acc.result().top1, 50.0);  // ties go to class 0
  EXPECT_NEAR(acc.result().ece, 0.0, 1e-12);
}

TEST(Metrics, BatchesAddUpToOneBatch) {
  torch::manual_seed(7);
  const auto logits = torch::randn({50, 7}) * 3;
  const auto labels = torch::randint(0, 7, {50}, torch::kLong);
  MetricAccumulator whole(7), parts(7);
  whole.add(logits, labels);
  int64_t start = 0;
  for (int64_t size : {7, 13, 0, 30}) {
    parts.add(logits.slice(0, start, start + size), labels.slice(0, start, start + size));
    start += size;
  }
  const Metrics a = whole.result(), b = parts.result();
  EXPECT_EQ(a.count, 50);
  EXPECT_EQ(b.count, 50);
  EXPECT_DOUBLE_EQ(a.top1, b.top1);
  EXPECT_DOUBLE_EQ(a.top5, b.top5);
  EXPECT_DOUBLE_EQ(a.mean_per_class, b.mean_per_class);
  EXPECT_DOUBLE_EQ(a.macro_f1, b.macro_f1);
  EXPECT_NEAR(a.ece, b.ece, 1e-12);
  EXPECT_EQ(a.confusion, b.confusion);
  EXPECT_GT(a.ece, 0.0);
}

TEST(Metrics, RejectsBadShapesAndValues) {
  MetricAccumulator acc(3);
  const auto good = torch::zeros({2, 3});
  EXPECT_NE(error_of([&] { acc.add(torch::zeros({3}), labels_of({0})); }).find("[B,3]"), std::string::npos);
  EXPECT_NE(error_of([&] { acc.add(torch::zeros({2, 4}), labels_of({0, 1})); }).find("[B,3]"), std::string::npos);
  EXPECT_NE(error_of([&] { acc.add(good, labels_of({0, 1, 2})); }).find("labels must be [2]"), std::string::npos);
  EXPECT_NE(error_of([&] { acc.add(good, torch::zeros({2})); }).find("integer"), std::string::npos);
  EXPECT_NE(error_of([&] { acc.add(good, labels_of({0, 3})); }).find("label 3 at row 1"), std::string::npos);
  EXPECT_NE(error_of([&] { acc.add(good, labels_of({-1, 0})); }).find("outside [0,3)"), std::string::npos);
  EXPECT_NE(error_of([&] { acc.add(good, labels_of({0, 1}), {"only-one"}); }).find("ids"), std::string::npos);
  auto nan = good.clone();
  nan[1][2] = std::nanf("");
  EXPECT_NE(error_of([&] { acc.add(nan, labels_of({0, 1})); }).find("NaN (first in row 1)"), std::string::npos);
  auto inf = good.clone();
  inf[0][0] = INFINITY;
  EXPECT_NE(error_of([&] { acc.add(inf, labels_of({0, 1})); }).find("no finite maximum"), std::string::npos);
  EXPECT_EQ(acc.result().count, 0);  // rejected batches leave no trace
  EXPECT_THROW(MetricAccumulator(0), Error);
}

TEST(Metrics, EmptyAccumulatorIsAllZero) {
  const Metrics m = MetricAccumulator(4).result();
  EXPECT_EQ(m.count, 0);
  EXPECT_EQ(m.top1, 0.0);
  EXPECT_EQ(m.ece, 0.0);
  EXPECT_EQ(m.confusion.size(), 4u);
}

TEST(Metrics, PredictionsJsonl) {
  const auto dir = vt::temp_dir("metrics_jsonl");
  MetricAccumulator acc(6, /*keep_predictions=*/true);
  auto logits = torch::tensor({0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 9.f, 0.f, 0.f, 0.f, 0.f, 0.f}).reshape({2, 6});
  acc.add(logits, labels_of({5, 1}), {"a.jpg", "b.jpg"});
  acc.add(logits.slice(0, 0, 1), labels_of({0}));  // no ids: the sample's running index
  const std::string path = (dir / "pred.jsonl").string();
  acc.write_predictions_jsonl(path);
  std::istringstream in(vlmadapt::read_file(path));
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["id"], "a.jpg");
  EXPECT_EQ(lines[0]["label"], 5);
  EXPECT_EQ(lines[0]["prediction"], 5);
  EXPECT_EQ(lines[0]["top5"], nlohmann::json({5, 4, 3, 2, 1}));
  // softmax of 0..5 at 5: 1 / sum_k e^{-k}
  double z = 0;
  for (int k = 0; k < 6; ++k) z += std::exp(-k);
  EXPECT_NEAR(lines[0]["confidence"].get<double>(), 1 / z, 1e-6);
  EXPECT_EQ(lines[1]["prediction"], 0);
  EXPECT_EQ(lines[1]["top5"], nlohmann::json({0, 1, 2, 3, 4}));  // ties in index order
  EXPECT_EQ(lines[2]["id"], "2");
  EXPECT_THROW(MetricAccumulator(3).write_predictions_jsonl(path), Error);
}

TEST(Metrics, ConfusionCsv) {
  const auto dir = vt::temp_dir("metrics_csv");
  MetricAccumulator acc(3);
  acc.add(one_hot_logits({0, 0, 1, 1, 2}, 3), labels_of({0, 0, 0, 1, 1}));
  const std::string path = (dir / "confusion.csv").string();
  acc.write_confusion_csv(path, {"cat", "dog, big", "bird"});
  EXPECT_EQ(vlmadapt::read_file(path),
            "true\\predicted,cat,\"dog, big\",bird\ncat,2,1,0\n\"dog, big\",0,1,1\nbird,0,0,0\n");
  EXPECT_NE(error_of([&] { acc.write_confusion_csv(path, {"one"}); }).find(path), std::string::npos);
}

TEST(Metrics, JsonAndHarmonicMean) {
  EXPECT_DOUBLE_EQ(vlmadapt::harmonic_mean(80, 70), 2.0 * 80 * 70 / 150);
  EXPECT_EQ(vlmadapt::harmonic_mean(0, 0), 0.0);
  Metrics m;
  m.count = 3;
  m.top1 = 50;
  m.ece = 1.5;
  m.confusion = {{1}};
  const nlohmann::json j = m;
  EXPECT_EQ(j["count"], 3);
  EXPECT_EQ(j["top1"], 50.0);
  EXPECT_EQ(j["ece"], 1.5);
  for (const char* key : {"top5", "mean_per_class", "macro_f1"}) EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_FALSE(j.contains("confusion"));
}

namespace {

std::vector<std::string> lines_of(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line, sep))
    if (!line.empty()) out.push_back(line);
  return out;
}

}  // namespace

TEST(Progress, LogModeWritesAboutTenPlainLinesWithEveryField) {
  std::ostringstream out;
  vlmadapt::Progress p("train epoch 1/2", 100, out, vlmadapt::Progress::Mode::Log);
  for (int64_t step = 1; step <= 100; ++step) p.update(step, 0.5, 2e-3, 32);
  p.finish();
  const auto lines = lines_of(out.str(), '\n');
  EXPECT_GE(lines.size(), 10u);
  EXPECT_LE(lines.size(), 11u);
  EXPECT_EQ(out.str().find('\r'), std::string::npos);
  EXPECT_EQ(lines.back().rfind("train epoch 1/2 100/100 loss 0.5000 lr 0.002 ", 0), 0u) << lines.back();
  for (const char* field : {"img/s", "eta"}) EXPECT_NE(lines.back().find(field), std::string::npos) << field;
}

TEST(Progress, TerminalModeRewritesOneLineAndLeavesOutMissingNumbers) {
  std::ostringstream out;
  vlmadapt::Progress p("adapt", 3, out, vlmadapt::Progress::Mode::Terminal);
  for (int64_t step = 1; step <= 3; ++step) p.update(step, std::nan(""), std::nan(""), 1);
  p.finish();
  const auto lines = lines_of(out.str(), '\r');
  ASSERT_EQ(lines.size(), 3u);  // one rewrite per step
  EXPECT_EQ(lines[2].rfind("adapt 3/3 ", 0), 0u);
  EXPECT_EQ(lines[2].find("loss"), std::string::npos);
  EXPECT_NE(lines[2].find("\x1b[K"), std::string::npos);  // clears the rest of the old line
  EXPECT_EQ(out.str().back(), '\n');
}
