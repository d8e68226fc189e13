// Files built into the library (third_party/clip), so that nothing has to be
// found on disk at run time.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace vlmadapt::resources {

// The CLIP BPE merges file, decompressed (UTF-8 text).
const std::string& bpe_merges();
// Class names and templates of CLIP's evaluation datasets (JSON text).
std::string_view datasets_prompts_json();
std::string_view imagenet_prompts_json();

// gunzip a buffer; throws vlmadapt::Error naming `what` on corrupt input, or once the
// output would pass `max_bytes` (a gzip bomb inflates about 1000:1; nothing is kept past it).
std::string gunzip(std::string_view gz, const std::string& what, size_t max_bytes = SIZE_MAX);

}  // namespace vlmadapt::resources
