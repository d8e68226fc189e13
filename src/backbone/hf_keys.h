// Hugging Face transformers CLIPModel <-> OpenAI key names (the inverse of
// transformers' convert_clip_original_pytorch_to_hf.py).
#pragma once
#include <optional>
#include <string>

#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {

struct HfConfig {
  int64_t text_heads = 0, vision_heads = 0;
  Activation activation = Activation::QuickGELU;
  double layer_norm_eps = 1e-5;
};

// Hugging Face's config.json of a CLIP model takes about 5 KB.
constexpr uint64_t kMaxHfConfigBytes = uint64_t(16) << 20;
// Reads config.json (at most kMaxHfConfigBytes); throws vlmadapt::Error naming the file and the key.
HfConfig read_hf_config(const std::string& path);
// The same from config.json's text; `path` names it in errors.
HfConfig parse_hf_config(const std::string& text, const std::string& path);
void apply_hf_config(const HfConfig& hf, ClipConfig& config);
// Renames keys, concatenates q/k/v into in_proj, transposes the projections.
TensorMap hf_to_openai(TensorMap hf, const std::string& where);

}  // namespace vlmadapt
