// Files built into the library (third_party/clip), so that nothing has to be
// found on disk at run time.
#pragma once
#include <string>
#include <string_view>

namespace vlmadapt::resources {

// The CLIP BPE merges file, decompressed (UTF-8 text).
const std::string& bpe_merges();
// Class names and templates of CLIP's evaluation datasets (JSON text).
std::string_view datasets_prompts_json();
std::string_view imagenet_prompts_json();

// gunzip a buffer; throws vlmadapt::Error naming `what` on corrupt input.
std::string gunzip(std::string_view gz, const std::string& what);

}  // namespace vlmadapt::resources
