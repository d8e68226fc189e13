// The fuzz targets' committed corpora as regression inputs of the normal suite
// (docs/RELIABILITY.md, "Fuzzing"): built with the default compiler, without libFuzzer,
// each target's entry point compiled under its own name (tests/CMakeLists.txt defines
// LLVMFuzzerTestOneInput=fuzz_<target> for fuzz_<target>.cpp, and the target list as
// VLMADAPT_FUZZ_TARGETS). A finding aborts (fuzz_util.h), so a reader that crashes, lets
// anything but a vlmadapt::Error escape or breaks a promise on a committed input fails ctest.
//
//   fuzz_replay <target> <corpus folder>     e.g. fuzz_replay image tests/fuzz/corpus/image
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <vlmadapt/core/fs.h>

using Target = int (*)(const uint8_t*, size_t);

#define X(name) extern "C" int fuzz_##name(const uint8_t* data, size_t size);
VLMADAPT_FUZZ_TARGETS
#undef X

namespace {

const std::map<std::string, Target> kTargets = {
#define X(name) {#name, fuzz_##name},
    VLMADAPT_FUZZ_TARGETS
#undef X
};

std::vector<std::filesystem::path> corpus_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// As libFuzzer passes it: a buffer of exactly the input's size, so that a sanitizer build
// (scripts/sanitize.sh) reports a read past its end.
void run_one(Target target, const std::filesystem::path& file) {
  const std::string bytes = vlmadapt::read_file(file.string());
  const auto copy = std::make_unique<uint8_t[]>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), copy.get());
  target(copy.get(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || !kTargets.count(argv[1])) {
    std::fprintf(stderr, "usage: fuzz_replay <target> <corpus folder>; targets:");
    for (const auto& [name, target] : kTargets) std::fprintf(stderr, " %s", name.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  try {
    const auto files = corpus_files(argv[2]);
    if (files.empty()) throw std::runtime_error(std::string(argv[2]) + ": no inputs");  // a wrong path passes nothing
    for (const auto& file : files) {
      std::printf("%s\n", file.filename().c_str());
      std::fflush(stdout);  // a crash leaves the input's name last in the log
      run_one(kTargets.at(argv[1]), file);
    }
    std::printf("%s: %zu inputs replayed\n", argv[1], files.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_replay: %s\n", e.what());
    return 1;
  }
  return 0;
}
