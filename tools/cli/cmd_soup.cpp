// vlmadapt soup: model soups of finished runs (engine/soup.h), written and evaluated as a run.
#include <ostream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/soup.h>

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int soup_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  SoupOptions s;
  po::options_description o("soup options");
  o.add_options()("out,o", po::value(&s.out)->required(), "the soup's run folder")
      ("greedy", po::bool_switch(&s.greedy), "greedy soup: ingredients by validation top-1, each kept only if the "
                                             "soup's validation top-1 does not drop (default: uniform, all of them)")
      ("strict", po::bool_switch(&s.strict), "greedy: keep an ingredient only if validation top-1 rises (model-soups' code)")
      ("runs", po::value(&s.runs)->multitoken(), "finished run folders of one method, model and class set");
  auto p = parse_args(args, "vlmadapt soup RUN_DIRS... --out DIR [--greedy [--strict]]", o, "runs", out);
  if (p.help) return 0;
  if (s.strict && !s.greedy) throw Error("--strict: only with --greedy");
  const SoupResult r = make_soup(s, err);
  for (const auto& x : r.ingredients)
    err << (x.kept ? "  kept    " : "  dropped ") << x.run << "\n";
  out << r.dir << "\n" << r.metrics.dump(2) << "\n";
  return 0;
}

const bool registered = add_command({"soup", "average the learned state of finished runs (uniform or greedy soup)", soup_main});

}  // namespace
}  // namespace vlmadapt::cli
