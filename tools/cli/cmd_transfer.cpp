// vlmadapt transfer: a finished run's learned state on other datasets (engine/transfer.h):
// cross-dataset transfer and domain generalisation.
#include <ostream>

#include <nlohmann/json.hpp>

#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/transfer.h>

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int transfer_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  po::options_description o("transfer options");
  o.add_options()("run", po::value<std::string>()->required(), "finished run folder")
      ("set,s", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "override of every target: data.key=value ...")
      ("targets", po::value<std::vector<std::string>>()->multitoken(),
       "dataset recipes, each a target (default: the run's eval.transfer)");
  auto p = parse_args(args, "vlmadapt transfer --run DIR [TARGET_RECIPES...] [--set data.key=value ...]", o, "targets", out);
  if (p.help) return 0;
  const std::string run = p.vars["run"].as<std::string>();
  std::vector<std::string> targets, sets;
  if (p.vars.count("targets")) targets = p.vars["targets"].as<std::vector<std::string>>();
  if (p.vars.count("set")) sets = p.vars["set"].as<std::vector<std::string>>();
  if (targets.empty()) targets = read_run_folder(run).recipe.eval.transfer;
  if (targets.empty()) throw Error(run + ": no targets: give dataset recipes, or train with eval.transfer set");
  nlohmann::json all;
  for (const auto& file : targets) {
    auto r = evaluate_transfer(run, transfer_target({file}, sets), "", err);
    all[r.dir] = r.metrics;
  }
  out << all.dump(2) << "\n";
  return 0;
}

const bool registered =
    add_command({"transfer", "evaluate a finished run's learned state on other datasets (cross-dataset, domain shift)",
                 transfer_main});

}  // namespace
}  // namespace vlmadapt::cli
