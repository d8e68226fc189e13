// The merges-file reader of the tokenizer (Tokenizer::from_merges in src/backbone/tokenizer.cpp:
// gunzip, the merge lines, their symbols' byte alphabet, the vocabulary built from them) on
// arbitrary bytes, then the tokenizer it made on a few texts.
// A valid file has CLIP's 48,894 merge lines, far more than a fuzzer's input. With the first
// byte even, the input is the head of the file and the built-in merges go on after it from
// the line where it ends, so mutated heads reach the whole reader; with it odd, the input is
// the whole file (gzip'ed or short files).
#include <vlmadapt/backbone/tokenizer.h>

#include <algorithm>

#include "core/resources.h"
#include "fuzz_util.h"

using namespace vlmadapt;

namespace {

// `head`, completed by the built-in merges from the line after its last one on.
std::string continued(std::string head) {
  const std::string& builtin = resources::bpe_merges();
  if (!head.empty() && head.back() != '\n') head += '\n';
  size_t at = 0;
  for (size_t lines = std::count(head.begin(), head.end(), '\n'); lines > 0 && at != std::string::npos; --lines) {
    at = builtin.find('\n', at);
    if (at != std::string::npos) ++at;
  }
  return at == std::string::npos ? head : head + builtin.substr(at);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string input = fuzz::bytes(data + 1, size - 1);
  fuzz::expect_only_errors([&] {
    const Tokenizer tokenizer = Tokenizer::from_merges(data[0] & 1 ? input : continued(input), "fuzz-merges.txt");
    for (const char* text : {"a photo of a cat.", "Größe: 12,5 cm", "<|startoftext|> ))) zzzz"}) {
      const std::vector<int64_t> ids = tokenizer.encode(text);
      for (int64_t id : ids) fuzz::require(id >= 0 && id < tokenizer.vocab_size(), "ids lie in the vocabulary");
      tokenizer.decode(ids);
      tokenizer.tokenize({text}, 77, /*truncate=*/true);
    }
  });
  return 0;
}
