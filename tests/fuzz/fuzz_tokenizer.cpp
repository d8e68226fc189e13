// The BPE tokenizer (src/backbone/tokenizer.cpp) with the built-in vocabulary on arbitrary
// text: encode, decode, tokenize (the first byte sets the context length and truncation),
// and decode of arbitrary ids (the input read as 16-bit numbers, many outside the vocabulary).
#include <vlmadapt/backbone/tokenizer.h>

#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer tokenizer;
  if (size == 0) return 0;
  const std::string text = fuzz::bytes(data + 1, size - 1);
  fuzz::expect_only_errors([&] {
    const std::vector<int64_t> ids = tokenizer.encode(text);
    for (int64_t id : ids) fuzz::require(id >= 0 && id < tokenizer.vocab_size(), "ids lie in the vocabulary");
    tokenizer.decode(ids);
  });
  fuzz::expect_only_errors([&] {
    const int64_t context = 1 + data[0] % 80;
    const at::Tensor t = tokenizer.tokenize({text}, context, /*truncate=*/data[0] & 0x80);
    fuzz::require(t.size(0) == 1 && t.size(1) == context, "one row of the context length");
  });
  fuzz::expect_only_errors([&] {
    std::vector<int64_t> ids;
    for (size_t i = 0; i + 1 < size; i += 2) ids.push_back(int16_t(data[i] | data[i + 1] << 8) * 2);
    tokenizer.decode(ids);
  });
  return 0;
}
