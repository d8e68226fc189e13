// Test streams: the orders (by hand), runs over orders with an online method reset
// between them, the run statistics, state files that let a stream stop and go on, and
// their errors; the report's test-time adaptation table and plots.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/cli/cli.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/engine/recipe.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/stream_order.h>
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;

namespace vlmadapt {
namespace {

// ---- orders ----------------------------------------------------------------------

std::vector<int64_t> labels_of(int classes, int per_class) {
  std::vector<int64_t> labels;
  for (int i = 0; i < classes * per_class; ++i) labels.push_back(i % classes);  // interleaved, as a split may be
  return labels;
}

bool is_permutation_of(const std::vector<int64_t>& order, size_t n) {
  std::set<int64_t> seen(order.begin(), order.end());
  return order.size() == n && seen.size() == n && *seen.begin() == 0 && *seen.rbegin() == static_cast<int64_t>(n) - 1;
}

// Times the label changes from one stream position to the next.
int label_changes(const std::vector<int64_t>& labels, const std::vector<int64_t>& order) {
  int changes = 0;
  for (size_t i = 1; i < order.size(); ++i) changes += labels[order[i]] != labels[order[i - 1]];
  return changes;
}

TEST(StreamOrder, EveryOrderIsASeededPermutation) {
  const auto labels = labels_of(10, 30);
  for (auto order : {StreamOrder::Shuffled, StreamOrder::ByClass, StreamOrder::Dirichlet}) {
    const auto a = stream_order(labels, order, 0.01, 7);
    EXPECT_TRUE(is_permutation_of(a, labels.size())) << to_string(order);
    EXPECT_EQ(a, stream_order(labels, order, 0.01, 7)) << to_string(order);
    EXPECT_NE(a, stream_order(labels, order, 0.01, 8)) << to_string(order);
  }
}

TEST(StreamOrder, ByClassKeepsEachClassContiguous) {
  const auto labels = labels_of(10, 30);
  const auto order = stream_order(labels, StreamOrder::ByClass, 1, 3);
  EXPECT_EQ(label_changes(labels, order), 9);  // ten runs of one class each
  // A shuffled stream of 10 balanced classes changes label at ~90% of the steps.
  EXPECT_GT(label_changes(labels, stream_order(labels, StreamOrder::Shuffled, 1, 3)), 200);
}

// The mean over classes of the stretch of stream from a class's first image to its last,
// as a share of the stream.
double mean_class_span(const std::vector<int64_t>& labels, const std::vector<int64_t>& order) {
  std::map<int64_t, std::pair<size_t, size_t>> span;
  for (size_t i = 0; i < order.size(); ++i) {
    auto [it, fresh] = span.try_emplace(labels[order[i]], i, i);
    it->second.second = i;
  }
  double sum = 0;
  for (const auto& [label, s] : span) sum += static_cast<double>(s.second - s.first + 1) / static_cast<double>(order.size());
  return sum / static_cast<double>(span.size());
}

TEST(StreamOrder, DirichletConcentrationSetsTheCorrelation) {
  const auto labels = labels_of(10, 30);
  // Concentration 1e-3: each class's images fall into one of the 10 slots (almost surely),
  // shuffled there with the classes that share it: a class spans a slot, not the stream.
  EXPECT_LT(mean_class_span(labels, stream_order(labels, StreamOrder::Dirichlet, 1e-3, 5)), 0.5);
  // Concentration 100: every class spread evenly over the slots spans the whole stream.
  EXPECT_GT(mean_class_span(labels, stream_order(labels, StreamOrder::Dirichlet, 100, 5)), 0.9);
  EXPECT_GT(label_changes(labels, stream_order(labels, StreamOrder::Dirichlet, 100, 5)), 200);
  // By class: each class one tenth of the stream.
  EXPECT_DOUBLE_EQ(mean_class_span(labels, stream_order(labels, StreamOrder::ByClass, 1, 5)), 0.1);
}

TEST(StreamOrder, DirichletDrawIsADistributionAndRejectsBadConcentrations) {
  for (double a : {1e-3, 0.1, 1.0, 50.0}) {
    const auto p = dirichlet_draw(8, a, 11);
    double sum = 0;
    for (double x : p) {
      EXPECT_GE(x, 0);
      sum += x;
    }
    EXPECT_NEAR(sum, 1.0, 1e-12) << a;
  }
  EXPECT_EQ(dirichlet_draw(1, 0.5, 1), std::vector<double>{1.0});
  for (double bad : {0.0, -1.0, std::nan("")})
    EXPECT_NE(vt::error_of([&] { dirichlet_draw(3, bad, 1); }).find("eval.dirichlet"), std::string::npos) << bad;
}

TEST(StreamOrder, TailIsTheMeanOfTheWorstTenthOfRuns) {
  EXPECT_DOUBLE_EQ(tail_mean({70, 50, 60, 80, 90, 65, 75, 85, 95, 55}), 50);  // 10 runs: the worst one
  std::vector<double> twenty;
  for (int i = 0; i < 20; ++i) twenty.push_back(40 + i);
  EXPECT_DOUBLE_EQ(tail_mean(twenty), 40.5);  // the worst two: 40 and 41
  EXPECT_DOUBLE_EQ(tail_mean({33}), 33);      // at least one run
}

TEST(StreamOrder, RecipeKeysAreChecked) {
  const auto where = "stream.ini";
  EXPECT_NE(vt::error_of([&] { parse_recipe_text("[eval]\norder = sideways\n", where); }).find("eval.order"),
            std::string::npos);
  for (const char* bad : {"dirichlet = 0", "dirichlet = -0.5", "runs = 0"})
    EXPECT_NE(vt::error_of([&] { parse_recipe_text(std::string("[eval]\n") + bad + "\n", where); }).find(
                  std::string("eval.") + std::string(bad).substr(0, std::string(bad).find(' '))),
              std::string::npos)
        << bad;
  auto r = parse_recipe_text("[eval]\norder = dirichlet\ndirichlet = 0.001\nruns = 12\n", where);
  EXPECT_EQ(r.eval.order, StreamOrder::Dirichlet);
  EXPECT_DOUBLE_EQ(r.eval.dirichlet, 0.001);
  EXPECT_EQ(r.eval.runs, 12);
}

// ---- an online probe -------------------------------------------------------------

// A minimal online method: its memory is the running sum of the test views' features,
// which pulls every prediction; the memory size when each stream begins is recorded.
std::vector<int64_t>& stream_starts() {
  static std::vector<int64_t> s;
  return s;
}

struct OnlineProbeOptions {
  double pull = 0.5;
  void bind(OptionSet& s) { s.add("pull", pull, "weight of the memory"); }
};

class OnlineProbe : public Method {
 public:
  explicit OnlineProbe(const OnlineProbeOptions& o) : options_(o) {
    sum_ = register_buffer("sum", torch::zeros({0}));
    seen_ = register_buffer("seen", torch::zeros({}, torch::kLong));
  }
  Contract contract() const override { return {Input::Features, false, false, Adaptation::Online}; }
  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    classifier_ = class_text_features(clip_, task.tokenizer, task.classnames, {"a photo of a {}."});
    sum_.set_data(torch::zeros({classifier_.size(1)}));
  }
  torch::Tensor logits(const Batch& b) override { return cosine_logits(clip_, b.image_features, classifier_); }
  void on_stream_begin() override { stream_starts().push_back(seen_.item<int64_t>()); }
  torch::Tensor adapt_and_predict(const Batch& views) override {
    torch::NoGradGuard no_grad;
    auto f = torch::nn::functional::normalize(views.image_features.narrow(0, 0, 1), {});
    sum_.add_(f[0]);
    seen_.add_(1);
    return cosine_logits(clip_, f - options_.pull * sum_ / seen_.item<double>(), classifier_);
  }

 private:
  OnlineProbeOptions options_;
  Clip clip_{nullptr};
  torch::Tensor classifier_, sum_, seen_;
};
VLMADAPT_REGISTER_METHOD(OnlineProbe, OnlineProbeOptions, "online_probe", "test method of test_stream: a running mean")

// The same, under another name (a state file of another method).
class OnlineProbeB : public OnlineProbe {
 public:
  using OnlineProbe::OnlineProbe;
};
VLMADAPT_REGISTER_METHOD(OnlineProbeB, OnlineProbeOptions, "online_probe_b", "test method of test_stream")

// A test-time step that diverged: every score NaN.
struct NanProbeOptions {
  void bind(OptionSet&) {}
};
class NanProbe : public Method {
 public:
  explicit NanProbe(const NanProbeOptions&) {}
  Contract contract() const override { return {Input::Features, false, false, Adaptation::Episodic}; }
  void setup(const TaskContext& task) override { classes_ = static_cast<int64_t>(task.classnames.size()); }
  torch::Tensor logits(const Batch& b) override { return torch::full({b.image_features.size(0), classes_}, NAN); }
  torch::Tensor adapt_and_predict(const Batch&) override { return torch::full({1, classes_}, NAN); }

 private:
  int64_t classes_ = 0;
};
VLMADAPT_REGISTER_METHOD(NanProbe, NanProbeOptions, "nan_probe", "test method of test_stream: diverges")

// ---- runs of a dataset split -------------------------------------------------------

struct CliResult {
  int code;
  std::string out, err;
};

CliResult cli(std::vector<std::string> args, const std::string& in = "") {
  std::ostringstream o, e;
  Progress::quiet() = true;
  const int code = cli::run(args, o, e);
  return {code, o.str(), e.str()};
}

std::string fmnist() { return (vt::source_dir() / "recipes/datasets/fashion_mnist.ini").string(); }

nlohmann::json test_metrics(const std::string& cli_out) {
  const auto dir = cli_out.substr(0, cli_out.find('\n'));
  return nlohmann::json::parse(read_file((fs::path(dir) / "metrics.json").string()))["test"];
}

TEST(StreamRuns, OnlineRunsStartFromTheSameStateAndGiveTheirStatistics) {
  const auto dir = vt::temp_dir("stream_runs");
  stream_starts().clear();
  auto r = cli({"tta", "--recipe", fmnist(), "--set", "method=online_probe", "model.checkpoint=" + vt::tiny_vit(),
                "data.test_limit=60", "data.shots=0", "eval.views=1", "eval.order=by_class", "eval.runs=4",
                "output=" + (dir / "runs").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  // No val split (shots = 0): the test split is 4 streams, each from the empty memory.
  EXPECT_EQ(stream_starts(), (std::vector<int64_t>{0, 0, 0, 0}));
  const auto m = test_metrics(r.out);
  const auto runs = m["run_top1"].get<std::vector<double>>();
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(m["runs"], 4);
  EXPECT_EQ(m["order"], "by_class");
  double mean = 0, lowest = 100;
  for (double v : runs) mean += v / 4, lowest = std::min(lowest, v);
  EXPECT_NEAR(m["top1"].get<double>(), mean, 1e-9);
  EXPECT_DOUBLE_EQ(m["tail_top1"].get<double>(), lowest);  // 10% of 4 runs: the worst one
  double ss = 0;
  for (double v : runs) ss += (v - mean) * (v - mean);
  EXPECT_NEAR(m["top1_std"].get<double>(), std::sqrt(ss / 3), 1e-9);
  // The orders differ, and so do the online method's accuracies along them.
  EXPECT_GT(*std::max_element(runs.begin(), runs.end()) - lowest, 0) << m.dump();
  const auto running = m["stream"]["running_top1"].get<std::vector<double>>();
  EXPECT_EQ(m["stream"]["position"].back(), 60);
  EXPECT_NEAR(running.back(), mean, 1e-9);  // over the whole stream: the top-1
  EXPECT_GT(m["seconds_per_image"].get<double>(), 0);
  EXPECT_GT(m["peak_memory_mb"].get<double>(), 0);
  const auto bins = m["reliability"]["count"].get<std::vector<int64_t>>();
  EXPECT_EQ(std::accumulate(bins.begin(), bins.end(), int64_t{0}), 240);  // every prediction of every run
  fs::remove_all(dir);
}

TEST(StreamRuns, AMethodWithoutMemoryHasTheSameAccuracyInEveryOrder) {
  const auto dir = vt::temp_dir("stream_runs_zs");
  auto r = cli({"tta", "--recipe", fmnist(), "--set", "method=zeroshot", "model.checkpoint=" + vt::tiny_vit(),
                "data.test_limit=60", "data.shots=0", "eval.order=dirichlet", "eval.dirichlet=0.01", "eval.runs=3",
                "output=" + (dir / "runs").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto m = test_metrics(r.out);
  const auto runs = m["run_top1"].get<std::vector<double>>();
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
  EXPECT_EQ(m["top1_std"].get<double>(), 0);
  EXPECT_EQ(m["order"], "dirichlet 0.01");

  // The report: a table row per run and a reliability diagram; online runs get the
  // running accuracy beside zero-shot's when they share the order.
  r = cli({"tta", "--recipe", fmnist(), "--set", "method=online_probe", "model.checkpoint=" + vt::tiny_vit(),
           "data.test_limit=60", "data.shots=0", "eval.order=dirichlet", "eval.dirichlet=0.01", "eval.runs=3", "eval.views=1",
           "output=" + (dir / "runs").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  r = cli({"report", "--out", (dir / "report").string(), (dir / "runs").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto table = read_file((dir / "report" / "tta.md").string());
  EXPECT_NE(table.find("| online_probe/fashion_mnist | online | dirichlet 0.01 | 3 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| zeroshot/fashion_mnist | none | dirichlet 0.01 | 3 |"), std::string::npos) << table;
  EXPECT_TRUE(fs::exists(dir / "report" / "reliability_fashion_mnist_zeroshot_fashion_mnist.svg"))
      << "a reliability diagram per run";
  const auto running = read_file((dir / "report" / "running_fashion_mnist_dirichlet_0.01.svg").string());
  EXPECT_NE(running.find("online_probe/fashion_mnist"), std::string::npos);
  EXPECT_NE(running.find("zeroshot/fashion_mnist"), std::string::npos);
  fs::remove_all(dir);
}

// ---- state files -------------------------------------------------------------------

std::string image(const std::string& name) { return (vt::fixtures() / "preprocess" / "images" / name).string(); }

std::vector<std::string> twenty_images() {
  const std::vector<std::string> names = {"fmnist736.png", "fmnist3918.png", "fmnist7846.png", "fmnist8494.png",
                                          "chelsea.png"};
  std::vector<std::string> files;
  for (int i = 0; i < 20; ++i) files.push_back(image(names[(i * 3) % names.size()]));
  return files;
}

std::vector<std::string> stream_args(const std::string& method, const std::vector<std::string>& files,
                                     const std::string& state, const std::vector<std::string>& sets = {}) {
  std::vector<std::string> a = {"tta", "--recipe", fmnist(), "--set", "method=" + method,
                                "model.checkpoint=" + vt::tiny_vit(), "eval.views=1"};
  a.insert(a.end(), sets.begin(), sets.end());
  a.push_back("--stream");
  a.insert(a.end(), files.begin(), files.end());
  if (!state.empty()) a.insert(a.end(), {"--state", state});
  return a;
}

// file and top classes of each JSON line (seconds differ from run to run).
std::vector<std::string> answers(const std::string& out) {
  std::vector<std::string> rows;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line);
    rows.push_back(j["file"].dump() + j["top"].dump());
  }
  return rows;
}

// Every online method, the built-in ones and the probe: the same answers, bit for bit.
class StreamStateOf : public ::testing::TestWithParam<std::string> {};

TEST_P(StreamStateOf, TwentyImagesEqualTenAStopAndTenMore) {
  const std::string method = GetParam();
  const auto dir = vt::temp_dir("stream_state_" + method);
  const auto files = twenty_images();
  const std::vector<std::string> views = {"eval.views=4"};
  auto whole = cli(stream_args(method, files, "", views));
  ASSERT_EQ(whole.code, 0) << whole.err;
  const auto state = (dir / "memory.safetensors").string();
  auto first = cli(stream_args(method, {files.begin(), files.begin() + 10}, state, views));
  ASSERT_EQ(first.code, 0) << first.err;
  ASSERT_TRUE(fs::exists(state));
  auto second = cli(stream_args(method, {files.begin() + 10, files.end()}, state, views));
  ASSERT_EQ(second.code, 0) << second.err;
  auto joined = answers(first.out), rest = answers(second.out);
  ASSERT_EQ(joined.size(), 10u);
  joined.insert(joined.end(), rest.begin(), rest.end());
  EXPECT_EQ(joined, answers(whole.out));
  // Without the state the second half starts from an empty memory and answers otherwise.
  if (method == "online_probe")
    EXPECT_NE(answers(cli(stream_args(method, {files.begin() + 10, files.end()}, "", views)).out), rest);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Online, StreamStateOf,
                         ::testing::Values("online_probe", "tda", "dmn", "boostadapter", "dpe"),
                         [](const auto& info) { return info.param; });

TEST(StreamState, AStateOfAnotherStreamIsAnErrorAndTheFileIsKept) {
  const auto dir = vt::temp_dir("stream_state_bad");
  const auto files = twenty_images();
  const std::vector<std::string> few(files.begin(), files.begin() + 3);
  const auto state = (dir / "memory.safetensors").string();
  ASSERT_EQ(cli(stream_args("online_probe", few, state)).code, 0);
  const std::string bytes = read_file(state);
  auto expect_refused = [&](const CliResult& r, const std::string& what) {
    EXPECT_EQ(r.code, 1) << what;
    EXPECT_NE(r.err.find(state), std::string::npos) << what << ": " << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_EQ(read_file(state), bytes) << what;
  };
  expect_refused(cli(stream_args("online_probe_b", few, state)), "method");
  expect_refused(cli(stream_args("online_probe", few, state, {"data.classes=base"})), "classes");
  expect_refused(cli(stream_args("online_probe", few, state, {"model.checkpoint=" + vt::tiny_rn()})), "model");
  auto r = cli(stream_args("tpt", few, state));  // an episodic method has no state to carry
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("episodic"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(state), bytes);
  // Truncated: the reader names the file; nothing is written over it.
  write_file_atomic(state, bytes.substr(0, bytes.size() / 2));
  r = cli(stream_args("online_probe", few, state));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(state), std::string::npos) << r.err;
  EXPECT_EQ(read_file(state), bytes.substr(0, bytes.size() / 2));
  // --state belongs to streams.
  r = cli({"tta", "--recipe", fmnist(), "--set", "method=online_probe", "--state", state});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--stream"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

// Whatever comes down a stream gets a line, a prediction or an error, and the stream goes
// on: good images among truncated and empty files, a folder, text named .png, a path
// that is not UTF-8 and a decompression bomb's header (refused before decoding).
TEST(StreamState, GarbageGetsAnErrorLineAndTheStreamGoesOn) {
  const auto dir = vt::temp_dir("stream_garbage");
  const std::string good = read_file(image("fmnist736.png"));
  auto put = [&](const std::string& name, const std::string& bytes) {
    const auto p = (dir / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  };
  std::string bomb("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
  for (uint32_t v : {20000u, 20000u})
    for (int shift = 24; shift >= 0; shift -= 8) bomb += static_cast<char>((v >> shift) & 0xFF);
  bomb += std::string("\x08\x02\0\0\0\0\0\0\0", 9);
  fs::create_directories(dir / "a_folder.png");
  const std::vector<std::string> inputs = {
      image("fmnist736.png"),
      put("truncated.png", good.substr(0, good.size() / 2)),
      put("empty.png", ""),
      (dir / "a_folder.png").string(),
      put("notes.png", "these are notes, not pixels"),
      put(std::string("caf\xe9_latin1.png"), good),
      put("bomb.png", bomb),
      image("fmnist3918.png")};
  std::string paths;
  for (const auto& p : inputs) paths += p + "\n";
  std::istringstream in(paths);
  std::ostringstream out, err;
  Progress::quiet() = true;
  const Recipe recipe = load_recipe({fmnist()}, {"method=tda", "model.checkpoint=" + vt::tiny_vit(), "eval.views=1"});
  EXPECT_EQ(stream_predictions(recipe, {"-"}, in, out, err), 5);  // paths read from the input, one per line
  std::vector<nlohmann::json> rows;
  std::istringstream lines(out.str());
  for (std::string l; std::getline(lines, l);) rows.push_back(nlohmann::json::parse(l));
  ASSERT_EQ(rows.size(), inputs.size()) << out.str();
  const std::vector<bool> predicted = {true, false, false, false, false, true, false, true};
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i].contains("top"), predicted[i]) << rows[i].dump();
  EXPECT_NE(rows[6]["error"].get<std::string>().find("20000 x 20000"), std::string::npos) << rows[6].dump();
  EXPECT_NE(rows[5]["file"].get<std::string>().find("caf"), std::string::npos);
  fs::remove_all(dir);
}

TEST(StreamState, NonFiniteScoresAreAnErrorNotANull) {
  const auto dir = vt::temp_dir("stream_nan");
  auto r = cli(stream_args("nan_probe", {image("fmnist736.png")}, ""));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("not finite"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("null"), std::string::npos) << r.out;
  r = cli({"tta", "--recipe", fmnist(), "--set", "method=nan_probe", "model.checkpoint=" + vt::tiny_vit(),
           "data.test_limit=5", "data.shots=0", "eval.views=1", "output=" + (dir / "runs").string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("NaN"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace vlmadapt
