// `report`: reading run folders, aggregating over seeds, Markdown and CSV.
// The plots are in report_plot.cpp.
#include <vlmadapt/report/report.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/engine/metrics.h>

#include "report/report_text.h"

namespace vlmadapt::report {
using text::file_stem;
using text::fmt;
namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& metric_names() {
  static const std::vector<std::string> names = {"test_top1",   "base_top1",     "new_top1",
                                                         "seen_top1",   "unseen_top1",   "harmonic_mean",
                                                         "run_seconds"};
  return names;
}

std::string metric_title(const std::string& metric) {
  if (metric == "test_top1") return "test top-1 accuracy (%)";
  if (metric == "base_top1") return "base-class top-1 accuracy (%)";
  if (metric == "new_top1") return "new-class top-1 accuracy (%)";
  if (metric == "seen_top1") return "seen-class top-1 accuracy, transductive zero-shot (%)";
  if (metric == "unseen_top1") return "unseen-class top-1 accuracy, transductive zero-shot (%)";
  if (metric == "harmonic_mean") return "harmonic mean of base and new, or of seen and unseen (%)";
  if (metric == "run_seconds")
    return "seconds per run: fitting and training (not the support set's frozen features, which are cached and shared "
           "by the methods; not the evaluation)";
  return metric;
}

namespace {

json parse_json_file(const std::string& path) {
  const std::string text = read_file(path);  // throws naming the file when missing
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
}

// The value at `key` of `obj`; `where` names the file (and parent key) for errors.
const json& need(const json& obj, const std::string& key, const std::string& where) {
  if (!obj.is_object()) throw Error(where + ": expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end()) throw Error(where + ": missing key \"" + key + "\"");
  return *it;
}

std::string need_string(const json& obj, const std::string& key, const std::string& where) {
  const json& v = need(obj, key, where);
  if (!v.is_string()) throw Error(where + ": \"" + key + "\" must be a string, got " + v.dump());
  return v.get<std::string>();
}

long long need_int(const json& obj, const std::string& key, const std::string& where) {
  const json& v = need(obj, key, where);
  if (!v.is_number_integer()) throw Error(where + ": \"" + key + "\" must be an integer, got " + v.dump());
  return v.get<long long>();
}

double need_number(const json& v, const std::string& key, const std::string& where) {
  if (!v.is_number()) throw Error(where + ": \"" + key + "\" must be a number, got " + v.dump());
  return v.get<double>();
}

// "base"/"new" are metric objects like "test"; a bare number is accepted too.
double split_top1(const json& v, const std::string& key, const std::string& where) {
  if (v.is_object()) return need_number(need(v, "top1", where + " \"" + key + "\""), key + ".top1", where);
  return need_number(v, key, where);
}

template <class T>
std::vector<T> number_list(const json& obj, const std::string& key, const std::string& where) {
  std::vector<T> out;
  if (!obj.contains(key)) return out;
  const json& v = obj.at(key);
  if (!v.is_array()) throw Error(where + ": \"" + key + "\" must be a list of numbers, got " + v.dump());
  for (const auto& x : v) out.push_back(static_cast<T>(need_number(x, key, where)));
  return out;
}

StreamResult read_stream_result(const json& test, const std::string& path) {
  const std::string where = path + " \"test\"";
  auto number = [&](const char* key, double fallback) {
    return test.contains(key) ? need_number(test.at(key), key, where) : fallback;
  };
  StreamResult s;
  s.order = test.value("order", std::string("split"));
  s.top1 = number("top1", 0);
  s.runs = static_cast<int>(number("runs", 1));
  s.top1_std = number("top1_std", 0);
  s.tail_top1 = number("tail_top1", s.top1);
  s.ece = number("ece", 0);
  s.seconds_per_image = number("seconds_per_image", 0);
  s.peak_memory_mb = number("peak_memory_mb", 0);
  if (test.contains("reliability")) {
    const json& r = test.at("reliability");
    s.bin_count = number_list<long long>(r, "count", where + " reliability");
    s.bin_confidence = number_list<double>(r, "confidence", where + " reliability");
    s.bin_accuracy = number_list<double>(r, "accuracy", where + " reliability");
    if (s.bin_confidence.size() != s.bin_count.size() || s.bin_accuracy.size() != s.bin_count.size())
      throw Error(where + ": reliability lists of different lengths");
  }
  if (test.contains("stream")) {
    const json& st = test.at("stream");
    s.positions = number_list<long long>(st, "position", where + " stream");
    s.running_top1 = number_list<double>(st, "running_top1", where + " stream");
    if (s.positions.size() != s.running_top1.size()) throw Error(where + ": stream lists of different lengths");
  }
  return s;
}

void read_metrics(Run& run, const std::string& path) {
  const json m = parse_json_file(path);
  run.values["test_top1"] = need_number(need(need(m, "test", path), "top1", path + " \"test\""), "test.top1", path);
  for (const char* split : {"base", "new", "seen", "unseen"})
    if (m.is_object() && m.contains(split))
      run.values[std::string(split) + "_top1"] = split_top1(m.at(split), split, path);
  if (m.contains("harmonic_mean"))
    run.values["harmonic_mean"] = need_number(m.at("harmonic_mean"), "harmonic_mean", path);
  else if (run.values.count("base_top1") && run.values.count("new_top1"))
    run.values["harmonic_mean"] = harmonic_mean(run.values["base_top1"], run.values["new_top1"]);
  const json& test = m.at("test");
  if (test.contains("seconds_per_image")) run.stream = read_stream_result(test, path);
}

// <dir>/transfer/<target>/ with a finished run.json and metrics.json: target -> test top-1.
void read_transfers(Run& run) {
  const fs::path root = fs::path(run.dir) / "transfer";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path r = it->path() / "run.json", m = it->path() / "metrics.json";
    if (!it->is_directory() || !is_file(r) || !is_file(m)) continue;
    if (parse_json_file(r.string()).value("status", "") != "finished") continue;
    const json metrics = parse_json_file(m.string());
    run.transfers[it->path().filename().string()] =
        need_number(need(need(metrics, "test", m.string()), "top1", m.string() + " \"test\""), "test.top1", m.string());
  }
  if (ec) throw Error(root.string() + ": cannot list folder (" + ec.message() + ")");
}

}  // namespace

std::optional<Run> read_run(const std::string& dir, std::string* skipped) {
  const std::string run_path = (fs::path(dir) / "run.json").string();
  const json r = parse_json_file(run_path);
  const std::string status = need_string(r, "status", run_path);
  if (r.value("kind", "") == "transfer") {
    if (skipped) *skipped = dir + ": skipped, a transfer result (shown with its run, from <run>/transfer/)";
    return std::nullopt;
  }
  if (status != "finished") {
    if (skipped) *skipped = dir + ": skipped, status \"" + status + "\" is not \"finished\"";
    return std::nullopt;
  }
  Run run;
  run.dir = dir;
  run.dataset = need_string(r, "dataset", run_path);
  run.method = need_string(r, "method", run_path);
  run.recipe = need_string(r, "recipe", run_path);
  const long long shots = need_int(r, "shots", run_path);
  if (shots < 0 || shots > 1000000) throw Error(run_path + ": \"shots\" must be >= 0, got " + std::to_string(shots));
  run.shots = static_cast<int>(shots);
  run.seed = need_int(r, "seed", run_path);
  read_metrics(run, (fs::path(dir) / "metrics.json").string());
  if (r.contains("fit_seconds"))
    run.values["run_seconds"] = need_number(r.at("fit_seconds"), "fit_seconds", run_path) +
                                need_number(r.value("train_seconds", json(0.0)), "train_seconds", run_path);
  if (run.stream) run.stream->adaptation = r.value("adaptation", std::string("none"));
  read_transfers(run);
  return run;
}

namespace {

// Run folders are leaves: once a folder holds run.json its subfolders (checkpoints,
// caches) are not searched. Directory symlinks below the given paths are not followed.
void find_run_dirs(const fs::path& dir, std::vector<fs::path>& out) {
  if (fs::exists(dir / "run.json")) {
    out.push_back(dir);
    return;
  }
  std::error_code ec;
  std::vector<fs::path> children;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_directory() && !it->is_symlink()) children.push_back(it->path());
  if (ec) throw Error(dir.string() + ": cannot list folder (" + ec.message() + ")");
  std::sort(children.begin(), children.end());
  for (const auto& c : children) find_run_dirs(c, out);
}

std::string run_identity(const Run& r) {
  return r.dataset + "/" + r.method + "/" + r.recipe + "/" + std::to_string(r.shots) + "shot/seed" +
         std::to_string(r.seed);
}

}  // namespace

Collection collect_runs(const std::vector<std::string>& paths) {
  std::set<fs::path> dirs;  // canonical, so overlapping paths read a run once
  for (const auto& p : paths) {
    fs::path path(p);
    if (!fs::exists(path)) throw Error(p + ": no such file or folder");
    if (!fs::is_directory(path) && path.filename() == "run.json") path = path.parent_path();
    if (!fs::is_directory(path)) throw Error(p + ": expected a run folder or a folder of runs");
    std::vector<fs::path> found;
    find_run_dirs(path, found);
    if (found.empty()) throw Error(p + ": no run folders (folders holding run.json) found");
    for (const auto& d : found) dirs.insert(fs::weakly_canonical(d));
  }
  Collection c;
  std::map<std::string, std::string> seen;  // identity -> folder
  for (const auto& d : dirs) {
    std::string why;
    auto run = read_run(d.string(), &why);
    if (!run) {
      c.skipped.push_back(why);
      continue;
    }
    auto [it, fresh] = seen.emplace(run_identity(*run), run->dir);
    if (!fresh)
      throw Error(run->dir + ": same run (" + it->first + ") as " + it->second +
                  "; remove one so its seed is not counted twice");
    c.runs.push_back(std::move(*run));
  }
  return c;
}

namespace {

// A method is named by its recipe too when one dataset holds several recipes of it,
// so that different recipes are never averaged together.
std::map<std::pair<std::string, std::string>, std::set<std::string>> recipes_of(const std::vector<Run>& runs) {
  std::map<std::pair<std::string, std::string>, std::set<std::string>> out;
  for (const auto& r : runs) out[{r.dataset, r.method}].insert(r.recipe);
  return out;
}

Cell summarize(const std::vector<double>& xs) {
  Cell c;
  c.n = static_cast<int>(xs.size());
  double sum = 0;
  for (double x : xs) sum += x;
  c.mean = sum / c.n;
  if (c.n > 1) {
    double ss = 0;
    for (double x : xs) ss += (x - c.mean) * (x - c.mean);
    c.std = std::sqrt(ss / (c.n - 1));
  }
  return c;
}

}  // namespace

std::vector<Cell> aggregate(const std::vector<Run>& runs) {
  const auto recipes = recipes_of(runs);
  using Key = std::tuple<std::string, std::string, int>;
  std::map<Key, std::map<std::string, std::vector<double>>> groups;
  for (const auto& r : runs) {
    const bool several = recipes.at({r.dataset, r.method}).size() > 1;
    const std::string label = several ? r.method + "/" + r.recipe : r.method;
    auto& g = groups[Key{r.dataset, label, r.shots}];
    for (const auto& [metric, value] : r.values) g[metric].push_back(value);
  }
  std::vector<Cell> cells;
  for (const auto& [key, by_metric] : groups)
    for (const auto& metric : metric_names()) {
      auto it = by_metric.find(metric);
      if (it == by_metric.end()) continue;
      Cell c = summarize(it->second);
      std::tie(c.dataset, c.method, c.shots) = key;
      c.metric = metric;
      cells.push_back(c);
    }
  return cells;
}

namespace {


std::string md_escape(std::string s) {
  for (size_t i = 0; (i = s.find('|', i)) != std::string::npos; i += 2) s.insert(i, "\\");
  return s;
}

std::string md_cell(const Cell& c) {
  const char* f = c.metric == "run_seconds" ? "%.2f" : "%.1f";  // training-free fits take hundredths
  std::string s = fmt(f, c.mean);
  if (c.n > 1) s += " ± " + fmt(f, c.std);
  return s + " (n=" + std::to_string(c.n) + ")";
}

std::string shots_header(int shots) { return shots == 0 ? "zero-shot" : std::to_string(shots) + "-shot"; }

// One table: rows = methods, columns = the shot counts present for this metric.
std::string md_table(const std::vector<const Cell*>& cells) {
  std::set<int> shots;
  std::map<std::string, std::map<int, const Cell*>> rows;
  for (const Cell* c : cells) {
    shots.insert(c->shots);
    rows[c->method][c->shots] = c;
  }
  std::string out = "| method |", rule = "|---|";
  for (int k : shots) out += " " + shots_header(k) + " |", rule += "---|";
  out += "\n" + rule + "\n";
  for (const auto& [method, by_shots] : rows) {
    out += "| " + md_escape(method) + " |";
    for (int k : shots) {
      auto it = by_shots.find(k);
      out += " " + (it == by_shots.end() ? std::string("-") : md_cell(*it->second)) + " |";
    }
    out += "\n";
  }
  return out;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) out += (ch == '"') ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

std::vector<std::string> datasets_of(const std::vector<Cell>& cells) {
  std::vector<std::string> out;
  for (const auto& c : cells)
    if (std::find(out.begin(), out.end(), c.dataset) == out.end()) out.push_back(c.dataset);
  return out;
}

std::vector<const Cell*> select(const std::vector<Cell>& cells, const std::string& dataset,
                                const std::string& metric) {
  std::vector<const Cell*> out;
  for (const auto& c : cells)
    if (c.dataset == dataset && c.metric == metric) out.push_back(&c);
  return out;
}

// Base-to-new side by side: base, new and H of each method and shot count.
std::string base_new_table(const std::vector<Cell>& cells, const std::string& dataset) {
  std::map<std::pair<std::string, int>, std::map<std::string, const Cell*>> rows;
  for (const auto& c : cells)
    if (c.dataset == dataset && (c.metric == "base_top1" || c.metric == "new_top1" || c.metric == "seen_top1" ||
                                 c.metric == "unseen_top1" || c.metric == "harmonic_mean"))
      rows[{c.method, c.shots}][c.metric] = &c;
  if (rows.empty()) return "";
  std::string out = "\nbase-to-new and transductive zero-shot: top-1 % on the base and the new classes, or on the seen "
                    "and the unseen ones, and H (their harmonic mean, averaged over seeds)\n\n"
                    "| method | shots | base | new | seen | unseen | H |\n|---|---|---|---|---|---|---|\n";
  for (const auto& [key, by_metric] : rows) {
    out += "| " + md_escape(key.first) + " | " + shots_header(key.second) + " |";
    for (const char* metric : {"base_top1", "new_top1", "seen_top1", "unseen_top1", "harmonic_mean"}) {
      auto it = by_metric.find(metric);
      out += " " + (it == by_metric.end() ? std::string("-") : md_cell(*it->second)) + " |";
    }
    out += "\n";
  }
  return out;
}

}  // namespace

std::string markdown(const std::vector<Cell>& cells) {
  std::string out = "# Results\n\nMean ± sample standard deviation over seeds; n = number of seeds.\n";
  for (const auto& dataset : datasets_of(cells)) {
    out += "\n## " + md_escape(dataset) + "\n" + base_new_table(cells, dataset);
    for (const auto& metric : metric_names()) {
      const auto selected = select(cells, dataset, metric);
      if (selected.empty()) continue;
      out += "\n" + metric_title(metric) + "\n\n" + md_table(selected);
    }
  }
  return out;
}

std::string csv(const std::vector<Cell>& cells) {
  std::string out = "dataset,method,shots,metric,mean,std,n\n";
  for (const auto& c : cells)
    out += csv_field(c.dataset) + "," + csv_field(c.method) + "," + std::to_string(c.shots) + "," + c.metric + "," +
           fmt("%.4f", c.mean) + "," + fmt("%.4f", c.std) + "," + std::to_string(c.n) + "\n";
  return out;
}

namespace {
}  // namespace

std::vector<std::string> write_report(const std::vector<Cell>& cells, const std::string& out_dir) {
  std::vector<std::string> written;
  auto put = [&](const std::string& name, const std::string& data) {
    const std::string path = (fs::path(out_dir) / name).string();
    write_file_atomic(path, data);
    written.push_back(path);
  };
  put("report.md", markdown(cells));
  put("report.csv", csv(cells));
  for (const auto& dataset : datasets_of(cells))
    for (const auto& metric : metric_names()) {
      if (select(cells, dataset, metric).empty()) continue;
      const std::string stem = file_stem(dataset) + "_" + metric;
      put(stem + ".svg", plot_svg(cells, dataset, metric));
      put(stem + ".png", plot_png(cells, dataset, metric));
    }
  return written;
}

}  // namespace vlmadapt::report
