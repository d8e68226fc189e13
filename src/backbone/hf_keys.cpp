#include "hf_keys.h"

#include <regex>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

namespace vlmadapt {
namespace {

using json = nlohmann::json;

Activation activation_of(const std::string& act, const std::string& where) {
  if (act == "quick_gelu") return Activation::QuickGELU;
  if (act == "gelu") return Activation::GELU;
  throw Error(where + ": hidden_act '" + act + "' is not supported (expected quick_gelu or gelu)");
}

// Block-level renames shared by both towers (prefix already replaced).
const std::vector<std::pair<std::string, std::string>> kBlockRenames = {
    {"self_attn.out_proj.", "attn.out_proj."}, {"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."},
    {"mlp.fc1.", "mlp.c_fc."},                 {"mlp.fc2.", "mlp.c_proj."}};

const std::vector<std::pair<std::string, std::string>> kTopRenames = {
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    {"text_model.final_layer_norm.", "ln_final."},
    {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"},
    {"vision_model.embeddings.class_embedding", "visual.class_embedding"},
    {"vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"},
    {"vision_model.pre_layrnorm.", "visual.ln_pre."},  // sic: the real key has the typo
    {"vision_model.post_layernorm.", "visual.ln_post."},
    {"text_model.encoder.layers.", "transformer.resblocks."},
    {"vision_model.encoder.layers.", "visual.transformer.resblocks."},
};

std::string rename(const std::string& key) {
  std::string k = key;
  for (const auto& [from, to] : kTopRenames)
    if (k.rfind(from, 0) == 0) {
      k = to + k.substr(from.size());
      break;
    }
  for (const auto& [from, to] : kBlockRenames) {
    auto pos = k.find(from);
    if (pos != std::string::npos) k.replace(pos, from.size(), to);
  }
  return k;
}

}  // namespace

HfConfig read_hf_config(const std::string& path) {
  return parse_hf_config(read_file(path, kMaxHfConfigBytes, "a Hugging Face config.json"), path);
}

HfConfig parse_hf_config(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  try {
    HfConfig hf;
    const auto& text = j.at("text_config");
    const auto& vision = j.at("vision_config");
    hf.text_heads = text.at("num_attention_heads").get<int64_t>();
    hf.vision_heads = vision.at("num_attention_heads").get<int64_t>();
    hf.activation = activation_of(text.value("hidden_act", std::string("quick_gelu")), path);
    hf.layer_norm_eps = text.value("layer_norm_eps", 1e-5);
    // The widths come from the weights; validate_clip_config checks that heads divide them.
    for (const auto& [name, heads] : {std::pair{"text_config", hf.text_heads}, std::pair{"vision_config", hf.vision_heads}})
      if (heads < 1 || heads > 4096)
        throw Error(path + ": " + name + ".num_attention_heads is " + std::to_string(heads) + ", expected 1..4096");
    if (!(hf.layer_norm_eps > 0 && hf.layer_norm_eps < 1))
      throw Error(path + ": text_config.layer_norm_eps is " + std::to_string(hf.layer_norm_eps) + ", expected (0, 1)");
    return hf;
  } catch (const json::exception& e) {
    throw Error(path + ": Hugging Face CLIP config lacks a key: " + e.what());
  }
}

void apply_hf_config(const HfConfig& hf, ClipConfig& c) {
  c.transformer_heads = hf.text_heads;
  c.vision_heads = hf.vision_heads;
  c.activation = hf.activation;
  c.layer_norm_eps = hf.layer_norm_eps;
}

TensorMap hf_to_openai(TensorMap hf, const std::string& where) {
  static const std::regex qkv(R"((.*)\.self_attn\.([qkv])_proj\.(weight|bias))");
  TensorMap out;
  std::map<std::string, std::array<torch::Tensor, 3>> packed;  // "<block>.attn.in_proj_<kind>" -> q,k,v
  for (auto& [key, value] : hf) {
    if (key.find("position_ids") != std::string::npos) continue;  // older exports persist it
    std::smatch m;
    if (std::regex_match(key, m, qkv)) {
      const std::string target = rename(m[1].str() + ".") + "attn.in_proj_" + m[3].str();
      packed[target][std::string("qkv").find(m[2].str()[0])] = value;
      continue;
    }
    if (key == "text_projection.weight") out["text_projection"] = value.t().contiguous();
    else if (key == "visual_projection.weight") out["visual.proj"] = value.t().contiguous();
    else out[rename(key)] = value;
  }
  for (auto& [key, parts] : packed) {
    for (const auto& p : parts)
      if (!p.defined()) throw Error(where + ": incomplete q/k/v projections for '" + key + "'");
    out[key] = torch::cat({parts[0], parts[1], parts[2]}, 0);
  }
  return out;
}

}  // namespace vlmadapt
