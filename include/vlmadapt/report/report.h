// `report`: gathers finished runs and summarises them over seeds.
//
// A run folder (runs/<dataset>/<method>/<recipe>_<K>shot/seed<S>/) holds
//   run.json      {"dataset","method","recipe","shots","seed","status"}
//   metrics.json  {"test": {"top1",...}, optional "val", "base", "new", "harmonic_mean"}
// The summary is mean ± sample standard deviation over seeds per (dataset, method,
// shots), written as Markdown, CSV and an accuracy-versus-shots plot (SVG and PNG).
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vlmadapt::report {

// The metric names a run can carry, in the order tables list them:
// "test_top1" (metrics.json test.top1), "base_top1" (base.top1), "new_top1" (new.top1)
// and "harmonic_mean" (the top-level number).
const std::vector<std::string>& metric_names();
// A human title for a metric name ("test top-1 accuracy (%)"), used by tables and plots.
std::string metric_title(const std::string& metric);

// What the evaluator records of a test split as a stream (metrics.json "test"), for the
// test-time adaptation report: absent from runs made before it existed.
struct StreamResult {
  std::string order;          // "shuffled", "by_class", "dirichlet 0.01"
  std::string adaptation;     // none, episodic, online (run.json)
  int runs = 1;
  double top1 = 0, top1_std = 0, tail_top1 = 0, ece = 0;
  double seconds_per_image = 0, peak_memory_mb = 0;
  std::vector<double> bin_confidence, bin_accuracy;  // percent per confidence bin
  std::vector<long long> bin_count;
  std::vector<long long> positions;                 // running accuracy along the stream
  std::vector<double> running_top1;
};

// One finished run.
struct Run {
  std::string dir;  // the run folder
  std::string dataset, method, recipe;
  int shots = 0;    // 0 = zero-shot
  long long seed = 0;
  std::map<std::string, double> values;  // metric name -> percent; test_top1 always present
  std::optional<StreamResult> stream;     // when metrics.json's test split has seconds_per_image
  // Cross-dataset transfer and domain generalisation (engine/transfer.h): test top-1 of the
  // run's state on each <dir>/transfer/<target>/ that holds a finished result.
  std::map<std::string, double> transfers;
};

// Reads one run folder. Returns nullopt, with `*skipped` set to a line saying why, when
// run.json's status is not "finished", or when the folder is a transfer result (it is read
// with its run, from <run>/transfer/). Throws vlmadapt::Error naming the file when
// run.json or metrics.json is missing, not JSON, or lacks a needed key.
std::optional<Run> read_run(const std::string& dir, std::string* skipped = nullptr);

struct Collection {
  std::vector<Run> runs;              // sorted by folder
  std::vector<std::string> skipped;   // one line per unfinished run
};
// Every run folder (a folder holding run.json) in or under `paths`, each read once.
// Throws vlmadapt::Error for a path that does not exist or holds no run folder, and
// for two folders that are the same run (dataset, method, recipe, shots, seed).
Collection collect_runs(const std::vector<std::string>& paths);

// Mean ± sample standard deviation (n-1; 0 when n = 1) of one metric over seeds.
struct Cell {
  std::string dataset;
  std::string method;  // "<method>/<recipe>" when a dataset holds several recipes of it
  int shots = 0;
  std::string metric;  // one of metric_names()
  double mean = 0, std = 0;
  int n = 0;
};
// Sorted by dataset, method, shots, then metric_names() order.
std::vector<Cell> aggregate(const std::vector<Run>& runs);

// One "## <dataset>" section per dataset: for base-to-new runs first a table with base,
// new and harmonic mean side by side (rows = method and shots), then a table per metric
// present (test top-1 first): rows = methods, columns = shots, cells "71.2 ± 0.4 (n=3)"
// ("71.2 (n=1)").
std::string markdown(const std::vector<Cell>& cells);
// Header dataset,method,shots,metric,mean,std,n; numbers with 4 decimals.
std::string csv(const std::vector<Cell>& cells);

// Accuracy-versus-shots plot of one dataset and metric: a line with markers and std
// error bars per method; the shots axis is log2-spaced (1,2,4,8,16) when every positive
// shot count is a power of two and linear otherwise; a method's 0-shot result is drawn
// as a horizontal dashed line across the plot.
constexpr int kPlotWidth = 900, kPlotHeight = 540;
std::string plot_svg(const std::vector<Cell>& cells, const std::string& dataset,
                     const std::string& metric = "test_top1");
// The same plot rasterised with OpenCV and PNG-encoded (kPlotWidth x kPlotHeight, BGR).
std::string plot_png(const std::vector<Cell>& cells, const std::string& dataset,
                     const std::string& metric = "test_top1");

// Writes report.md, report.csv and, per dataset, <dataset>_<metric>.svg/.png for every
// metric it has, into `out_dir` (each file atomically). Returns the paths written.
std::vector<std::string> write_report(const std::vector<Cell>& cells, const std::string& out_dir);

// ---- cross-dataset transfer ----------------------------------------------------------

// One "## <source dataset>" section per dataset whose runs have transfers: rows = method
// (and recipe where a dataset has several) and shots, columns = the source's test top-1,
// then each target's, cells mean ± std over seeds (n). Empty when no run has transfers.
std::string transfer_markdown(const std::vector<Run>& runs);
// Header source,method,shots,target,mean,std,n (target "source" is the run's own test).
std::string transfer_csv(const std::vector<Run>& runs);
// Writes transfer.md and transfer.csv into `out_dir` when a run has transfers; returns the paths.
std::vector<std::string> write_transfer_report(const std::vector<Run>& runs, const std::string& out_dir);

// ---- test-time adaptation ----------------------------------------------------------

// One "## <dataset>" section per dataset with a run that adapts at test time: a row per
// such run and per zero-shot run of the dataset (its baselines; method/recipe, stream order) with top-1 (mean over stream orders), its std, the
// mean of the worst 10% of orders, ECE, seconds per image and peak memory.
std::string tta_markdown(const std::vector<Run>& runs);
// A reliability diagram (accuracy per confidence bin against the diagonal) of one run.
std::string reliability_svg(const Run& run);
// Running top-1 along the stream of every online run of `dataset` under `order`, beside
// the zero-shot runs (method zeroshot) of the same dataset and order.
std::string running_accuracy_svg(const std::vector<Run>& runs, const std::string& dataset, const std::string& order);
// Writes tta.md, reliability_<dataset>_<method>_<recipe>.svg per run and, per dataset
// and order with an online run, running_<dataset>_<order>.svg. Returns the paths written.
std::vector<std::string> write_tta_report(const std::vector<Run>& runs, const std::string& out_dir);

}  // namespace vlmadapt::report
