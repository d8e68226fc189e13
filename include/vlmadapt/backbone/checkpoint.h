// Loading real released CLIP checkpoints: OpenAI TorchScript archives, open_clip
// state dicts (safetensors or torch.save), and Hugging Face CLIPModel safetensors.
#pragma once
#include <string>

#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {

enum class CheckpointFormat { OpenAITorchScript, OpenClipSafetensors, OpenClipPickle, HuggingFace };
std::string to_string(CheckpointFormat format);

struct Checkpoint {
  CheckpointFormat format;
  TensorMap state_dict;  // OpenAI key names, stored dtypes, CPU
  ClipConfig config;
};

// Reads any supported checkpoint (a file, or a Hugging Face folder with config.json) into
// OpenAI-keyed tensors. Throws vlmadapt::Error naming the file for a missing, corrupt or
// unknown-layout file.
Checkpoint read_checkpoint(const std::string& path);

struct LoadOptions {
  std::string device = "cpu";   // "cpu", "cuda", "cuda:1"
  bool half = false;            // fp16 weights (CUDA); fp32 otherwise
};

// The frozen CLIP of a checkpoint, in eval mode, fp32 on CPU by default.
Clip load_clip(const std::string& path, const LoadOptions& options = {});
// A CLIP with random weights of a named architecture (benchmarks, tests).
Clip random_clip(const std::string& arch, uint64_t seed = 0);

// A checkpoint path for model.checkpoint: "default" is the built-in model, looked for in
// $VLMADAPT_MODELS, ./models, the installed package's models folder, then the source tree
// it was built from.
std::string resolve_checkpoint(const std::string& name);
// The installed package's models folder (<prefix>/share/vlmadapt/models). It defaults to
// the install prefix configured at build time; the CLI sets it from where the package
// really is (an install with --prefix elsewhere, or a moved one).
void set_installed_models_dir(const std::string& dir);

// Writes an open_clip-keyed safetensors file (the layout of models/).
void save_clip(const Clip& clip, const std::string& path, bool half = false);

}  // namespace vlmadapt
