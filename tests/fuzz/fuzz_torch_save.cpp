// The torch.save archive reader (open_clip .bin/.pt state dicts; src/backbone/torch_archive.cpp
// and torch_pickle.cpp) on arbitrary bytes. The zip CRC-32s stop most mutations of a record's
// contents here; fuzz_torch_pickle reaches the pickle itself.
#include "backbone/torch_archive.h"
#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_only_errors([&] {
    for (const auto& [key, t] : read_torch_save_tensors_bytes(fuzz::bytes(data, size), "fuzz.bin"))
      fuzz::require(fuzz::inside_storage(t), "every tensor lies inside its storage");
  });
  return 0;
}
