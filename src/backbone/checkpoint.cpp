// Checkpoint formats -> one OpenAI-keyed state dict -> ClipImpl::load_weights.
#include <vlmadapt/backbone/checkpoint.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

#include "hf_keys.h"
#include "torch_archive.h"

namespace vlmadapt {
namespace fs = std::filesystem;

std::string to_string(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::OpenAITorchScript: return "openai-torchscript";
    case CheckpointFormat::OpenClipSafetensors: return "open_clip-safetensors";
    case CheckpointFormat::OpenClipPickle: return "open_clip-torch.save";
    case CheckpointFormat::HuggingFace: return "huggingface";
  }
  return "unknown";
}

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

std::string head_bytes(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string buf(n, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(n));
  buf.resize(static_cast<size_t>(in.gcount()));
  return buf;
}

bool is_zip(const std::string& path) { return head_bytes(path, 4) == std::string("PK\x03\x04", 4); }

TensorMap read_torchscript(const std::string& path) {
  TensorMap sd = read_torchscript_tensors(path);
  for (const char* meta : {"input_resolution", "context_length", "vocab_size"}) sd.erase(meta);
  return sd;
}

// open_clip: strip a DataParallel "module." prefix and the CustomTextCLIP "text." tower prefix.
TensorMap openclip_to_openai(TensorMap sd) {
  TensorMap out;
  for (auto& [key, value] : sd) {
    std::string k = starts_with(key, "module.") ? key.substr(7) : key;
    if (starts_with(k, "text.")) k = k.substr(5);
    if (k == "text_projection.weight") {  // an nn.Linear projection stores the transpose
      k = "text_projection";
      value = value.t().contiguous();
    }
    if (k == "attn_mask" || k == "logit_bias") continue;  // non-persistent mask / SigLIP bias
    out[k] = value;
  }
  return out;
}

fs::path hf_config_for(const fs::path& weights) {
  fs::path sibling = weights;
  sibling.replace_extension(".config.json");
  if (fs::exists(sibling)) return sibling;
  return weights.parent_path() / "config.json";
}

bool looks_like_hf(const TensorMap& sd) {
  return std::any_of(sd.begin(), sd.end(), [](const auto& kv) {
    return starts_with(kv.first, "text_model.") || starts_with(kv.first, "vision_model.");
  });
}

void check_layout(const TensorMap& sd, const std::string& path) {
  if (sd.count("token_embedding.weight") && sd.count("text_projection") &&
      (sd.count("visual.proj") || sd.count("visual.attnpool.positional_embedding")))
    return;
  std::string sample;
  int n = 0;
  for (const auto& [key, v] : sd) {
    if (n++ == 4) break;
    sample += (sample.empty() ? "" : ", ") + key;
  }
  throw Error(path + ": unknown checkpoint layout: expected CLIP keys such as 'token_embedding.weight', "
              "'text_projection' and 'visual.proj' (OpenAI/open_clip) or 'text_model.*' (Hugging Face); found " +
              std::to_string(sd.size()) + " keys" + (sample.empty() ? "" : " like " + sample));
}

// A lower bound on the parameters of `c` (the big matrices only). Every parameter must come
// from the file in at least 2 bytes (fp16), so an architecture needing more than the file
// holds is refused before its modules are allocated: a few bytes of hostile shapes could
// otherwise size a model of many gigabytes.
double min_parameters(const ClipConfig& c) {
  auto sq = [](double x) { return x * x; };
  double n = c.transformer_layers * 12 * sq(c.transformer_width) + double(c.vocab_size) * c.transformer_width;
  if (c.vision_vit) {
    n += c.vision_layers[0] * 12 * sq(c.vision_width) + 3 * sq(c.vision_patch_size) * c.vision_width;
  } else {
    n += 3 * sq(32.0 * c.vision_width);  // the attention pool's q, k, v
    for (size_t s = 0; s < c.vision_layers.size(); ++s)
      n += c.vision_layers[s] * 9 * sq(c.vision_width * double(1 << s));  // each block's 3x3 conv
  }
  return n;
}

void check_fits_file(const ClipConfig& c, const std::string& path) {
  std::error_code ec;
  const double bytes = static_cast<double>(fs::file_size(path, ec));
  if (min_parameters(c) * 2 > bytes)
    throw Error(path + ": the architecture read from the file (" + c.describe_values() + ") needs at least " +
                std::to_string(static_cast<uint64_t>(min_parameters(c) * 2)) + " bytes of weights, but the file has " +
                std::to_string(static_cast<uint64_t>(bytes)));
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path_in) {
  fs::path path(path_in);
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path_in + ": no such file or folder");
  if (fs::is_directory(path)) {  // a Hugging Face model folder
    fs::path weights = path / "model.safetensors";
    if (!fs::exists(weights)) throw Error(path_in + ": folder has no model.safetensors (Hugging Face layout expected)");
    path = weights;
  }
  const std::string p = path.string();
  if (fs::file_size(path, ec) < 8) throw Error(p + ": file is empty or truncated (under 8 bytes)");

  Checkpoint ck{};
  TensorMap raw;
  if (is_zip(p)) {
    ck.format = is_torchscript_archive(p) ? CheckpointFormat::OpenAITorchScript : CheckpointFormat::OpenClipPickle;
    raw = ck.format == CheckpointFormat::OpenAITorchScript ? read_torchscript(p) : read_torch_save_tensors(p);
  } else {
    raw = read_safetensors(p);
    ck.format = looks_like_hf(raw) ? CheckpointFormat::HuggingFace : CheckpointFormat::OpenClipSafetensors;
  }
  std::optional<HfConfig> hf;
  const std::string hf_config = hf_config_for(path).string();
  if (ck.format == CheckpointFormat::HuggingFace) {
    hf = read_hf_config(hf_config);
    ck.state_dict = hf_to_openai(std::move(raw), p);
  } else {
    ck.state_dict = openclip_to_openai(std::move(raw));
  }
  check_layout(ck.state_dict, p);
  ck.config = infer_clip_config(ck.state_dict, p);
  if (hf) {
    apply_hf_config(*hf, ck.config);
    validate_clip_config(ck.config, p + " with " + hf_config);
  }
  check_fits_file(ck.config, p);
  return ck;
}

Clip load_clip(const std::string& path, const LoadOptions& options) {
  Checkpoint ck = read_checkpoint(path);
  // Building the modules draws initial weights that the checkpoint then replaces; keep
  // those draws off the global stream so that loading a model never shifts a seeded run.
  auto generator = at::detail::getDefaultCPUGenerator();
  torch::Tensor rng_state;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    rng_state = generator.get_state();
  }
  Clip clip(ck.config);
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng_state);
  }
  clip->load_weights(ck.state_dict, path);
  torch::Device device(options.device);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw Error("device '" + options.device + "' requested but this libtorch has no CUDA device");
  clip->to(device, options.half ? torch::kHalf : torch::kFloat);
  return clip;
}

Clip random_clip(const std::string& arch, uint64_t seed) {
  Clip clip(ClipConfig::named(arch));
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& item : clip->named_parameters(true)) {
    auto& t = item.value();
    const std::string& k = item.key();
    const bool norm = k.find("ln_") != std::string::npos || k.find("bn") != std::string::npos ||
                      k.find(".1.weight") != std::string::npos;
    if (k == "logit_scale") t.fill_(std::log(1 / 0.07));
    else if (norm && t.dim() == 1) t.fill_(k.size() > 5 && k.compare(k.size() - 4, 4, "bias") == 0 ? 0.0 : 1.0);
    else t.normal_(0, 0.02);
  }
  return clip;
}

void save_clip(const Clip& clip, const std::string& path, bool half) {
  TensorMap sd = clip->weights();
  for (auto& [k, v] : sd)
    if (v.is_floating_point()) v = v.to(torch::kCPU, half ? torch::kHalf : torch::kFloat);
  write_safetensors(path, sd, {{"format", "open_clip"}, {"architecture", clip->config().describe()}});
}

static std::string& installed_models_dir() {
  static std::string dir = VLMADAPT_INSTALLED_MODELS_DIR;
  return dir;
}

void set_installed_models_dir(const std::string& dir) { installed_models_dir() = dir; }

std::string resolve_checkpoint(const std::string& name) {
  if (name != "default") return name;
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("VLMADAPT_MODELS")) candidates.emplace_back(env);
  candidates.emplace_back("models");
  candidates.emplace_back(installed_models_dir());
  candidates.emplace_back(VLMADAPT_MODELS_DIR);
  std::string looked;
  for (const auto& c : candidates) {
    if (fs::exists(c / "default.safetensors")) return (c / "default.safetensors").string();
    looked += (looked.empty() ? "" : ", ") + c.string();
  }
  throw Error("model.checkpoint = default: the built-in model was not found (looked in " + looked +
              "); set model.checkpoint to a CLIP checkpoint");
}

}  // namespace vlmadapt
