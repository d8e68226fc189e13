// vlmadapt pretrain: trains the small built-in CLIP from scratch (recipes/pretrain/).
#include <ostream>

#include "pretrain/pretrain.h"

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int pretrain_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  po::options_description o("pretrain options");
  o.add_options()("recipe,r", po::value<std::string>()->required(), "pretraining recipe (INI, [pretrain] section)")
      ("set,s", po::value<std::vector<std::string>>()->multitoken()->composing(), "override: pretrain.key=value ...");
  auto p = parse_args(args, "vlmadapt pretrain --recipe recipes/pretrain/fashion_mnist.ini [--set pretrain.key=value ...]", o, "", out);
  if (p.help) return 0;
  std::vector<std::string> sets;
  if (p.vars.count("set")) sets = p.vars["set"].as<std::vector<std::string>>();
  auto options = load_pretrain_recipe(p.vars["recipe"].as<std::string>(), sets);
  const double loss = pretrain(options, err);
  out << options.output << " (final mean loss " << loss << ")\n";
  return 0;
}

const bool registered = add_command({"pretrain", "train the small built-in CLIP from scratch", pretrain_main});

}  // namespace
}  // namespace vlmadapt::cli
