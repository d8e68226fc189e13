// What several suites share beyond paths (test_util.h): the tiny fixture ViT loaded once
// per test binary, and the CLI run in process.
#pragma once
#include <sstream>
#include <string>
#include <vector>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/cli/cli.h>
#include <vlmadapt/core/progress.h>

#include "test_util.h"

namespace vlmadapt::testing {

inline Clip& tiny_vit_clip() {
  static Clip c = load_clip(tiny_vit());
  return c;
}

// `vlmadapt ARGS...` in this process, quiet; its exit code, and its output in *out.
inline int run_cli(const std::vector<std::string>& args, std::string* out = nullptr) {
  std::ostringstream o, e;
  Progress::quiet() = true;
  const int code = cli::run(args, o, e);
  if (out) *out = o.str() + e.str();
  return code;
}

}  // namespace vlmadapt::testing
