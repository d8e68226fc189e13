// The TorchScript archive reader (OpenAI .pt; src/backbone/torch_archive.cpp and
// torch_pickle.cpp) on arbitrary bytes: tensors only, no code in the archive is ever run.
#include "backbone/torch_archive.h"
#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_only_errors([&] {
    for (const auto& [key, t] : read_torchscript_tensors_bytes(fuzz::bytes(data, size), "fuzz.pt"))
      fuzz::require(fuzz::inside_storage(t), "every tensor lies inside its storage");
  });
  return 0;
}
