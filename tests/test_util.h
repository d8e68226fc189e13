// Where the goldens are, and small helpers shared by the suites.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

#include <vlmadapt/core/error.h>
#include <unistd.h>

namespace vlmadapt::testing {

inline std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("VLMADAPT_SHARED")) return env;
  return VLMADAPT_SHARED_DIR;
}
inline std::filesystem::path fixtures() { return shared_dir() / "fixtures"; }
inline std::filesystem::path source_dir() { return VLMADAPT_SOURCE_DIR; }

// A fresh temporary folder for one test.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("vlmadapt_test_" + name + "_" +
                                                       std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace vlmadapt::testing

namespace vlmadapt::testing {
// The built `vlmadapt` executable (for tests that must run it as a separate process).
inline std::string cli_path() { return VLMADAPT_CLI; }
inline std::string tiny_vit() { return (fixtures() / "clip" / "tiny_vit" / "model_openai.pt").string(); }
inline std::string tiny_rn() { return (fixtures() / "clip" / "tiny_rn" / "model_openai.pt").string(); }
}  // namespace vlmadapt::testing

namespace vlmadapt::testing {
// The message of the vlmadapt::Error that `fn` throws (a marker if it throws none).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const vlmadapt::Error& e) {
    return e.what();
  }
  return "<no vlmadapt::Error thrown>";
}
}  // namespace vlmadapt::testing
