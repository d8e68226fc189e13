// vlmadapt methods | train | eval: recipes through the shared loop and evaluator.
#include <iostream>
#include <ostream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/engine/recipe.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/transfer.h>

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int methods(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  po::options_description o("methods options");
  o.add_options()("name", po::value<std::string>(), "show one method only");
  auto p = parse_args(args, "vlmadapt methods [NAME]", o, "name", out);
  if (p.help) return 0;
  for (const auto& name : method_names()) {
    if (p.vars.count("name") && p.vars["name"].as<std::string>() != name) continue;
    const auto& info = find_method(name);
    out << name << ": " << info.summary << "\n";
    const MethodOptions options = method_options(name);  // entries() refer into it: keep it alive
    for (const auto& e : options.set().entries())
      out << "  " << e.key << " = " << e.get() << "  (" << e.type << (e.accepted().empty() ? "" : ", " + e.accepted()) << ") " << e.help << "\n";
    out << "\n";
  }
  if (p.vars.count("name")) find_method(p.vars["name"].as<std::string>());  // unknown name -> error
  return 0;
}

po::options_description recipe_options() {
  po::options_description o("recipe options");
  o.add_options()("recipe,r", po::value<std::vector<std::string>>()->composing(), "recipe file(s); later ones win")
      ("set,s", po::value<std::vector<std::string>>()->multitoken()->composing(), "override: key=value ...");
  return o;
}

Recipe recipe_from(const po::variables_map& v) {
  if (!v.count("recipe")) throw Error("give at least one --recipe FILE");
  std::vector<std::string> sets;
  if (v.count("set")) sets = v["set"].as<std::vector<std::string>>();
  return load_recipe(v["recipe"].as<std::vector<std::string>>(), sets);
}

int train(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto o = recipe_options();
  o.add_options()("resume", po::bool_switch(), "continue a killed run from its latest epoch checkpoint");
  auto p = parse_args(args, "vlmadapt train --recipe R [--recipe R2] [--set key=value ...] [--resume]", o, "", out);
  if (p.help) return 0;
  auto summary = run_recipe(recipe_from(p.vars), p.vars["resume"].as<bool>(), err);
  out << summary.dir << "\n" << summary.metrics.dump(2) << "\n";
  return 0;
}

int tta(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto o = recipe_options();
  o.add_options()("stream", po::value<std::vector<std::string>>()->multitoken()->zero_tokens(),
                  "image files, folders, or - (paths on stdin): one JSON line per image")
      ("state", po::value<std::string>(), "with --stream: an online method's state, read when the file exists and "
                                          "written back when the stream ends");
  auto p = parse_args(args, "vlmadapt tta --recipe R [--set key=value ...] [--stream INPUTS... [--state FILE]]", o, "", out);
  if (p.help) return 0;
  Recipe recipe = recipe_from(p.vars);
  const std::string state = p.vars.count("state") ? p.vars["state"].as<std::string>() : "";
  if (!state.empty() && !p.vars.count("stream")) throw Error("--state: only with --stream (a dataset split starts from an empty state)");
  if (p.vars.count("stream")) {
    const int failed =
        stream_predictions(recipe, p.vars["stream"].as<std::vector<std::string>>(), std::cin, out, err, state);
    if (failed) throw Error(std::to_string(failed) + " image(s) could not be classified (see their \"error\" lines)");
    return 0;
  }
  if (!make_method(recipe.method_options())->contract().adapts())
    err << "note: method " << recipe.method << " does not adapt per test image; evaluating it as is\n";
  auto summary = run_recipe(recipe, false, err);
  out << summary.dir << "\n" << summary.metrics.dump(2) << "\n";
  return 0;
}

int eval(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto o = recipe_options();
  o.add_options()("run", po::value<std::string>()->required(), "run folder")
      ("split", po::value<std::string>()->default_value("test"), "split to evaluate: test or val")
      ("name", po::value<std::string>()->default_value(""), "with --recipe: the folder under <run>/transfer/");
  auto p = parse_args(args,
                      "vlmadapt eval --run DIR [--split test]\n"
                      "       vlmadapt eval --run DIR --recipe DATASET.ini [--set data.key=value ...] [--name N]"
                      "   (on another dataset: <run>/transfer/<name>/)",
                      o, "", out);
  if (p.help) return 0;
  const std::string run = p.vars["run"].as<std::string>();
  if (!p.vars.count("recipe")) {
    if (p.vars.count("set")) throw Error("--set: only with --recipe (the target dataset of a transfer)");
    out << evaluate_run(run, p.vars["split"].as<std::string>(), err).dump(2) << "\n";
    return 0;
  }
  if (p.vars["split"].as<std::string>() != "test") throw Error("--split: a transfer evaluates the target's test split");
  std::vector<std::string> sets;
  if (p.vars.count("set")) sets = p.vars["set"].as<std::vector<std::string>>();
  const auto target = transfer_target(p.vars["recipe"].as<std::vector<std::string>>(), sets);
  auto r = evaluate_transfer(run, target, p.vars["name"].as<std::string>(), err);
  out << r.dir << "\n" << r.metrics.dump(2) << "\n";
  return 0;
}

const bool registered = add_command({"methods", "list the adaptation methods and their options", methods}) &&
                        add_command({"train", "train and evaluate a recipe into its run folder", train}) &&
                        add_command({"tta", "test-time adaptation over a dataset split, or --stream over images", tta}) &&
                        add_command({"eval", "evaluate a finished run on a split", eval});

}  // namespace
}  // namespace vlmadapt::cli
