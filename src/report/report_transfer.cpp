// The cross-dataset part of `vlmadapt report`: each run's test top-1 beside its learned
// state's on other datasets (<run>/transfer/<target>/, engine/transfer.h), mean ± std over
// seeds, one table per source dataset as CoOp's cross-dataset and domain-shift tables.
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include <vlmadapt/core/fs.h>
#include <vlmadapt/report/report.h>

#include "report/report_text.h"

namespace vlmadapt::report {
using text::fmt;
namespace fs = std::filesystem;
namespace {

struct Summary {
  double mean = 0, std = 0;
  int n = 0;
};

Summary summarize(const std::vector<double>& xs) {
  Summary s;
  s.n = static_cast<int>(xs.size());
  for (double x : xs) s.mean += x / s.n;
  double ss = 0;
  for (double x : xs) ss += (x - s.mean) * (x - s.mean);
  if (s.n > 1) s.std = std::sqrt(ss / (s.n - 1));
  return s;
}

// source dataset -> (method label, shots) -> target ("source" first) -> values over seeds.
using Row = std::map<std::string, std::vector<double>>;
using Table = std::map<std::pair<std::string, int>, Row>;

std::map<std::string, Table> tables_of(const std::vector<Run>& runs) {
  std::map<std::pair<std::string, std::string>, std::set<std::string>> recipes;
  for (const auto& r : runs) recipes[{r.dataset, r.method}].insert(r.recipe);
  std::map<std::string, Table> out;
  for (const auto& r : runs) {
    if (r.transfers.empty()) continue;
    // several recipes of a method on a dataset are never averaged together
    const bool several = recipes.at({r.dataset, r.method}).size() > 1;
    Row& row = out[r.dataset][{several ? r.method + "/" + r.recipe : r.method, r.shots}];
    row["source"].push_back(r.values.at("test_top1"));
    for (const auto& [target, top1] : r.transfers) row[target].push_back(top1);
  }
  return out;
}

std::vector<std::string> targets_of(const Table& table) {
  std::set<std::string> names;
  for (const auto& [key, row] : table)
    for (const auto& [target, values] : row)
      if (target != "source") names.insert(target);
  return {names.begin(), names.end()};
}

std::string cell(const Row& row, const std::string& target) {
  auto it = row.find(target);
  if (it == row.end()) return "-";
  const Summary s = summarize(it->second);
  return fmt("%.1f", s.mean) + (s.n > 1 ? " ± " + fmt("%.1f", s.std) : "") + " (n=" + std::to_string(s.n) + ")";
}

}  // namespace

std::string transfer_markdown(const std::vector<Run>& runs) {
  const auto tables = tables_of(runs);
  if (tables.empty()) return "";
  std::string out = "\n# Transfer\n\nTest top-1 % of each run's learned state on its own dataset (source) and, without "
                    "further training, on the target datasets; mean ± std over seeds.\n";
  for (const auto& [source, table] : tables) {
    const auto targets = targets_of(table);
    out += "\n## from " + source + "\n\n| method | shots | " + source + " (source) |";
    std::string rule = "|---|---|---|";
    for (const auto& t : targets) out += " " + t + " |", rule += "---|";
    out += "\n" + rule + "\n";
    for (const auto& [key, row] : table) {
      out += "| " + key.first + " | " + std::to_string(key.second) + " | " + cell(row, "source") + " |";
      for (const auto& t : targets) out += " " + cell(row, t) + " |";
      out += "\n";
    }
  }
  return out;
}

std::string transfer_csv(const std::vector<Run>& runs) {
  std::string out = "source,method,shots,target,mean,std,n\n";
  for (const auto& [source, table] : tables_of(runs))
    for (const auto& [key, row] : table)
      for (const auto& [target, values] : row) {
        const Summary s = summarize(values);
        out += source + "," + key.first + "," + std::to_string(key.second) + "," + target + "," + fmt("%.4f", s.mean) +
               "," + fmt("%.4f", s.std) + "," + std::to_string(s.n) + "\n";
      }
  return out;
}

std::vector<std::string> write_transfer_report(const std::vector<Run>& runs, const std::string& out_dir) {
  const std::string md = transfer_markdown(runs);
  if (md.empty()) return {};
  const std::string a = (fs::path(out_dir) / "transfer.md").string(), b = (fs::path(out_dir) / "transfer.csv").string();
  write_file_atomic(a, md);
  write_file_atomic(b, transfer_csv(runs));
  return {a, b};
}

}  // namespace vlmadapt::report
