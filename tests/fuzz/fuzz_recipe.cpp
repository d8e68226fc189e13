// The recipe reader (load_recipe in src/engine/recipe.cpp: INI through Boost.Program_options,
// includes, every core and method option's parsing in src/core/options.cpp) with --set
// overrides, on arbitrary text. The input is the recipe file; after a line "--set", each
// line is one override "key=value" as given on the command line.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <vlmadapt/engine/recipe.h>

#include "fuzz_util.h"

using namespace vlmadapt;

namespace {

// load_recipe reads files (and resolves includes next to them), so the text goes to a file
// in a folder of this process's own, removed at exit.
char temp_dir[] = "/tmp/vlmadapt_fuzz_recipe.XXXXXX";

const std::string& recipe_path() {
  static const std::string path = [] {
    if (!mkdtemp(temp_dir)) fuzz::finding("setup", "cannot make a temporary folder");
    std::atexit([] { std::filesystem::remove_all(temp_dir); });
    return std::string(temp_dir) + "/recipe.ini";
  }();
  return path;
}

void split_input(const std::string& in, std::string& ini, std::vector<std::string>& overrides) {
  const std::string marker = "\n--set\n";
  const size_t at = in.find(marker);
  ini = in.substr(0, at);
  if (at == std::string::npos) return;
  size_t pos = at + marker.size();
  while (pos <= in.size()) {
    const size_t end = std::min(in.find('\n', pos), in.size());
    overrides.push_back(in.substr(pos, end - pos));
    pos = end + 1;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string ini;
  std::vector<std::string> overrides;
  split_input(fuzz::bytes(data, size), ini, overrides);
  {
    std::ofstream out(recipe_path(), std::ios::binary | std::ios::trunc);
    out << ini;
  }
  fuzz::expect_only_errors([&] {
    const Recipe recipe = load_recipe({recipe_path()}, overrides);
    // What a run does next with it: the resolved recipe.ini, the run folder, the method's options.
    recipe.to_ini();
    recipe.run_dir();
    recipe.method_options();
  });
  return 0;
}
