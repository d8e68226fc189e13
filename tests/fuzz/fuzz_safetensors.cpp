// The safetensors reader (src/core/safetensors.cpp) on arbitrary bytes.
#include <vlmadapt/core/safetensors.h>

#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in = fuzz::bytes(data, size);
  fuzz::expect_only_errors([&] {
    const TensorMap tensors = read_safetensors_bytes(in, "fuzz.safetensors");
    // The reader promises that the tensors never take more memory than the file's bytes.
    uint64_t total = 0;
    for (const auto& [key, t] : tensors) total += static_cast<uint64_t>(t.numel()) * t.element_size();
    fuzz::require(total <= size, "the tensors hold no more bytes than the file");
  });
  fuzz::expect_only_errors([&] { read_safetensors_metadata_bytes(in, "fuzz.safetensors"); });
  return 0;
}
