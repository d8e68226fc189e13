// CLIP's byte-level BPE tokenizer (openai/CLIP simple_tokenizer.py), with the
// vocabulary built into the library.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vlmadapt {

class Tokenizer {
 public:
  static constexpr int64_t kStartOfText = 49406;
  static constexpr int64_t kEndOfText = 49407;

  // The built-in vocabulary (bpe_simple_vocab_16e6). Cheap to copy: shares one table.
  Tokenizer();
  // A merges file of the same format (gzip or plain text), at most kMaxMergesBytes read
  // and decompressed.
  explicit Tokenizer(const std::string& merges_path);
  // The same from the file's bytes (the fuzz target feeds them); `what` names it in errors.
  static Tokenizer from_merges(std::string bytes, const std::string& what);
  // CLIP's merges file is 1.3 MB gzip'ed, 1.6 MB plain.
  static constexpr uint64_t kMaxMergesBytes = uint64_t(64) << 20;

  // Ids of the cleaned, lowercased text, without start and end tokens.
  std::vector<int64_t> encode(const std::string& text) const;
  // Text of ids; start/end tokens are dropped, "</w>" becomes a space.
  std::string decode(const std::vector<int64_t>& ids) const;
  // [N, context_length] int64: start, ids, end, zero padding. Without `truncate`
  // an over-long text throws vlmadapt::Error naming the text; with it the last
  // kept id is the end token.
  at::Tensor tokenize(const std::vector<std::string>& texts, int64_t context_length = 77,
                      bool truncate = false) const;
  int64_t vocab_size() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace vlmadapt
