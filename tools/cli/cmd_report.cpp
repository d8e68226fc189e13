// vlmadapt report: mean ± std over seeds, a method-by-shots table (Markdown and CSV)
// and accuracy-versus-shots plots (SVG and PNG).
#include <ostream>

#include <vlmadapt/report/report.h>

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int report_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  po::options_description o("report options");
  o.add_options()("out,o", po::value<std::string>()->default_value("report"), "folder for report.md, report.csv and plots")
      ("csv", po::bool_switch(), "print the CSV instead of the Markdown table")
      ("runs", po::value<std::vector<std::string>>()->multitoken(), "run folders or folders above them");
  auto p = parse_args(args, "vlmadapt report [--out DIR] RUN_DIRS...", o, "runs", out);
  if (p.help) return 0;
  std::vector<std::string> paths = p.vars.count("runs") ? p.vars["runs"].as<std::vector<std::string>>()
                                                        : std::vector<std::string>{"runs"};
  auto collection = report::collect_runs(paths);
  for (const auto& line : collection.skipped) err << line << "\n";
  auto cells = report::aggregate(collection.runs);
  const bool as_csv = p.vars["csv"].as<bool>();
  out << (as_csv ? report::csv(cells) : report::markdown(cells) + report::tta_markdown(collection.runs) +
                              report::transfer_markdown(collection.runs));
  const std::string dir = p.vars["out"].as<std::string>();
  for (const auto& path : report::write_report(cells, dir)) err << "wrote " << path << "\n";
  for (const auto& path : report::write_tta_report(collection.runs, dir)) err << "wrote " << path << "\n";
  for (const auto& path : report::write_transfer_report(collection.runs, dir)) err << "wrote " << path << "\n";
  return 0;
}

const bool registered = add_command({"report", "tables and plots over finished runs (mean ± std over seeds)", report_main});

}  // namespace
}  // namespace vlmadapt::cli
