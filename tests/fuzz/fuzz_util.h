// What the fuzz targets share. A reader may refuse an input only with vlmadapt::Error (the
// CLI prints it and exits non-zero); anything else that escapes it (std::bad_alloc,
// std::out_of_range, c10::Error, a json exception) is a finding, as are crashes, sanitizer
// reports, timeouts and allocations over libFuzzer's -malloc_limit_mb. Escapes abort with
// the exception's type and message, so libFuzzer saves the input as a crash.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include <vlmadapt/core/error.h>

namespace vlmadapt::fuzz {

inline std::string bytes(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

[[noreturn]] inline void finding(const char* what, const char* detail) {
  std::fprintf(stderr, "==vlmadapt-fuzz== %s: %s\n", what, detail);
  std::abort();
}

// Runs one read; a vlmadapt::Error is the reader's answer to a bad input. With
// VLMADAPT_FUZZ_VERBOSE set, its message is printed (to see why a seed is refused).
template <class F>
void expect_only_errors(F&& read) {
  static const bool verbose = std::getenv("VLMADAPT_FUZZ_VERBOSE") != nullptr;
  try {
    read();
  } catch (const vlmadapt::Error& e) {
    if (verbose) std::fprintf(stderr, "refused: %s\n", e.what());
  } catch (const std::exception& e) {
    finding((std::string("uncaught ") + typeid(e).name()).c_str(), e.what());
  } catch (...) {
    finding("uncaught exception", "not a std::exception");
  }
}

// A property every accepted input must have (a reader's promise, not just "no crash").
inline void require(bool ok, const char* promise) {
  if (!ok) finding("broken promise", promise);
}

// The tensor's elements all lie inside its storage: what checked_view and the safetensors
// checks promise, asked of the result itself.
inline bool inside_storage(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return t.storage_offset() >= 0 &&
         static_cast<uint64_t>(last + 1) * t.element_size() <= t.storage().nbytes();
}

}  // namespace vlmadapt::fuzz
