// vlmadapt bench: one JSON line per benchmark, with perf_py.py's fields (see bench.h).
#include <ostream>

#include "bench/bench.h"

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int bench_main(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  BenchOptions b;
  po::options_description o("bench options");
  o.add_options()("task", po::value(&b.task)->required(), "encode, coop, tpt, epoch, tta, fit or step")
      ("arch", po::value(&b.arch)->default_value(b.arch), "architecture by name (random weights), or default")
      ("n-cls", po::value(&b.n_cls)->default_value(b.n_cls), "classes (coop, tpt, step)")
      ("batch", po::value(&b.batch)->default_value(b.batch), "images per step (encode, coop, step)")
      ("threads", po::value(&b.threads)->default_value(b.threads), "intra-op threads")
      ("reps", po::value(&b.reps)->default_value(b.reps), "timed repetitions (median) after one warm-up")
      ("shots", po::value(&b.shots)->default_value(b.shots), "images per class (epoch, fit)")
      ("feature-views", po::value(&b.feature_views)->default_value(b.feature_views),
       "cached augmented views per image (epoch)")
      ("method", po::value(&b.method)->default_value(b.method), "method (tta, fit, step)")
      ("views", po::value(&b.views)->default_value(b.views), "views per test image (tta)")
      ("set", po::value(&b.sets)->multitoken()->composing(), "the method's options, KEY=VALUE ... (step, fit)");
  auto p = parse_args(args,
                      "vlmadapt bench TASK [--arch A] [--n-cls N] [--batch B] [--threads T] [--reps R]"
                      " [--shots K] [--feature-views V] [--method M] [--views V] [--set KEY=VALUE ...]",
                      o,
                      "task", out);
  if (p.help) return 0;
  out << run_bench(b).dump() << "\n";
  return 0;
}

const bool registered = add_command({"bench", "speed and memory of encode, coop, tpt steps, epochs, test-time methods and training steps (JSON line)", bench_main});

}  // namespace
}  // namespace vlmadapt::cli
