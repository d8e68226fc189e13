#include <vlmadapt/backbone/clip.h>

#include <cmath>
#include <set>
#include <sstream>

#include <vlmadapt/core/error.h>

#include "clip_layers.h"

namespace vlmadapt {

// ---- configuration ---------------------------------------------------------

std::string ClipConfig::describe() const {
  std::ostringstream os;
  if (vision_vit) {
    os << "ViT (" << vision_layers.at(0) << " layers, width " << vision_width << ", patch "
       << vision_patch_size;
  } else {
    os << "ModifiedResNet (blocks";
    for (auto b : vision_layers) os << " " << b;
    os << ", width " << vision_width;
  }
  os << ", " << image_resolution << "px), text transformer (" << transformer_layers << " layers, width "
     << transformer_width << ", " << transformer_heads << " heads), embedding " << embed_dim;
  return os.str();
}

namespace {

ClipConfig vit(int64_t embed, int64_t res, int64_t layers, int64_t width, int64_t patch, int64_t text_width) {
  ClipConfig c;
  c.embed_dim = embed;
  c.image_resolution = res;
  c.vision_vit = true;
  c.vision_layers = {layers};
  c.vision_width = width;
  c.vision_patch_size = patch;
  c.vision_heads = width / 64;
  c.transformer_width = text_width;
  c.transformer_heads = text_width / 64;
  c.transformer_layers = 12;
  return c;
}

ClipConfig resnet(int64_t embed, int64_t res, std::vector<int64_t> layers, int64_t width, int64_t text_width) {
  ClipConfig c = vit(embed, res, 0, width, 0, text_width);
  c.vision_vit = false;
  c.vision_layers = std::move(layers);
  c.vision_heads = width * 32 / 64;
  return c;
}

const std::vector<std::pair<std::string, ClipConfig>>& named_configs() {
  static const std::vector<std::pair<std::string, ClipConfig>> all = {
      {"ViT-B/32", vit(512, 224, 12, 768, 32, 512)},
      {"ViT-B/16", vit(512, 224, 12, 768, 16, 512)},
      {"ViT-L/14", vit(768, 224, 24, 1024, 14, 768)},
      {"ViT-L/14@336", vit(768, 336, 24, 1024, 14, 768)},
      {"RN50", resnet(1024, 224, {3, 4, 6, 3}, 64, 512)},
      {"RN101", resnet(512, 224, {3, 4, 23, 3}, 64, 512)},
      {"RN50x4", resnet(640, 288, {4, 6, 10, 6}, 80, 640)},
      {"RN50x16", resnet(768, 384, {6, 8, 18, 8}, 96, 768)},
      {"RN50x64", resnet(1024, 448, {3, 15, 36, 10}, 128, 1024)},
  };
  return all;
}

// The tensor `key` with `dims` dimensions (a hostile file may give any shape, and size(d)
// of a missing dimension would throw a c10::Error instead of naming the file).
const torch::Tensor& need(const TensorMap& sd, const std::string& key, const std::string& where, int64_t dims) {
  auto it = sd.find(key);
  if (it == sd.end()) throw Error(where + ": not a CLIP checkpoint: key '" + key + "' is missing");
  if (it->second.dim() != dims)
    throw Error(where + ": key '" + key + "' has shape " + c10::str(it->second.sizes()) + ", expected " +
                std::to_string(dims) + " dimensions");
  return it->second;
}

// sqrt(rows - 1) for a positional embedding of a square grid plus the class token.
int64_t grid_of(const TensorMap& sd, const std::string& key, const std::string& where) {
  const int64_t rows = need(sd, key, where, 2).size(0);
  const auto grid = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(std::max<int64_t>(rows - 1, 0)))));
  if (grid < 1 || grid * grid + 1 != rows)
    throw Error(where + ": " + key + " has " + std::to_string(rows) + " rows, expected a square grid plus one");
  return grid;
}

// Distinct values of key.split(".")[index] among keys starting with `prefix`.
int64_t count_distinct(const TensorMap& sd, const std::string& prefix, int index) {
  std::set<std::string> seen;
  for (const auto& [key, value] : sd) {
    if (key.rfind(prefix, 0) != 0) continue;
    std::vector<std::string> parts;
    std::stringstream ss(key);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    if (static_cast<int>(parts.size()) > index) seen.insert(parts[index]);
  }
  return static_cast<int64_t>(seen.size());
}

}  // namespace

ClipConfig ClipConfig::named(const std::string& name) {
  for (const auto& [n, c] : named_configs())
    if (n == name) return c;
  std::string known;
  for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown architecture '" + name + "'; known: " + known);
}

std::vector<std::string> ClipConfig::names() {
  std::vector<std::string> out;
  for (const auto& [n, c] : named_configs()) out.push_back(n);
  return out;
}

ClipConfig infer_clip_config(const TensorMap& sd, const std::string& where) {
  ClipConfig c;
  c.vision_vit = sd.count("visual.proj") > 0;
  if (c.vision_vit) {
    const auto& conv1 = need(sd, "visual.conv1.weight", where, 4);
    c.vision_width = conv1.size(0);
    c.vision_patch_size = conv1.size(-1);
    int64_t layers = 0;
    for (const auto& [key, v] : sd) {
      const std::string suffix = ".attn.in_proj_weight";
      if (key.rfind("visual.", 0) == 0 && key.size() > suffix.size() &&
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0)
        ++layers;
    }
    c.vision_layers = {layers};
    c.image_resolution = c.vision_patch_size * grid_of(sd, "visual.positional_embedding", where);
    c.vision_heads = c.vision_width / 64;
  } else {
    c.vision_layers.clear();
    for (int b = 1; b <= 4; ++b) c.vision_layers.push_back(count_distinct(sd, "visual.layer" + std::to_string(b), 2));
    c.vision_width = need(sd, "visual.layer1.0.conv1.weight", where, 4).size(0);
    c.image_resolution = grid_of(sd, "visual.attnpool.positional_embedding", where) * 32;
    c.vision_heads = c.vision_width * 32 / 64;
    c.vision_patch_size = 0;
  }
  c.embed_dim = need(sd, "text_projection", where, 2).size(1);
  c.context_length = need(sd, "positional_embedding", where, 2).size(0);
  c.vocab_size = need(sd, "token_embedding.weight", where, 2).size(0);
  c.transformer_width = need(sd, "ln_final.weight", where, 1).size(0);
  c.transformer_heads = c.transformer_width / 64;
  c.transformer_layers = count_distinct(sd, "transformer.resblocks", 2);
  if (c.transformer_heads < 1 || c.vision_heads < 1)
    throw Error(where + ": widths below 64 give no attention heads (text width " +
                std::to_string(c.transformer_width) + ")");
  validate_clip_config(c, where);
  return c;
}

void validate_clip_config(const ClipConfig& c, const std::string& where) {
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) throw Error(where + ": invalid architecture: expected " + what + " (" + c.describe_values() + ")");
  };
  // Upper bounds keep a hostile value from sizing modules beyond any memory; they are far
  // above the released models (ViT-bigG: width 1664, 48 layers; RN50x64: 448 px).
  constexpr int64_t kMaxWidth = 1 << 14, kMaxLayers = 1024, kMaxResolution = 1 << 13, kMaxVocab = 1 << 22;
  auto in = [](int64_t v, int64_t hi) { return v >= 1 && v <= hi; };
  expect(in(c.transformer_width, kMaxWidth) && in(c.vision_width, kMaxWidth) && in(c.embed_dim, kMaxWidth),
         "widths in 1.." + std::to_string(kMaxWidth));
  expect(in(c.transformer_layers, kMaxLayers), "text layers in 1.." + std::to_string(kMaxLayers));
  expect(c.vision_layers.size() == (c.vision_vit ? 1u : 4u), "1 (ViT) or 4 (ResNet) vision layer counts");
  for (int64_t l : c.vision_layers) expect(in(l, kMaxLayers), "vision layers in 1.." + std::to_string(kMaxLayers));
  expect(in(c.context_length, kMaxWidth) && in(c.vocab_size, kMaxVocab), "a positive context length and vocabulary");
  expect(in(c.transformer_heads, c.transformer_width) && c.transformer_width % c.transformer_heads == 0,
         "text heads > 0 dividing the text width");
  const int64_t vision_dim = c.vision_vit ? c.vision_width : c.vision_width * 32;  // ResNet: the attention pool
  expect(in(c.vision_heads, vision_dim) && vision_dim % c.vision_heads == 0, "vision heads > 0 dividing the vision width");
  expect(in(c.image_resolution, kMaxResolution), "an image resolution in 1.." + std::to_string(kMaxResolution));
  if (c.vision_vit)
    expect(in(c.vision_patch_size, c.image_resolution) && c.image_resolution % c.vision_patch_size == 0,
           "a patch size dividing the image resolution");
  else
    expect(c.image_resolution % 32 == 0, "a ResNet image resolution divisible by 32");
  expect(std::isfinite(c.layer_norm_eps) && c.layer_norm_eps > 0 && c.layer_norm_eps < 1, "a layer norm eps in (0, 1)");
}

std::string ClipConfig::describe_values() const {
  std::string layers;
  for (int64_t l : vision_layers) layers += (layers.empty() ? "" : ",") + std::to_string(l);
  return "text width " + std::to_string(transformer_width) + ", heads " + std::to_string(transformer_heads) +
         ", layers " + std::to_string(transformer_layers) + "; vision width " + std::to_string(vision_width) +
         ", heads " + std::to_string(vision_heads) + ", layers " + layers + ", patch " +
         std::to_string(vision_patch_size) + ", resolution " + std::to_string(image_resolution);
}

// ---- the model -------------------------------------------------------------

ClipImpl::ClipImpl(const ClipConfig& c) : config_(c) {
  visual_ = register_module("visual", c.vision_vit ? detail::make_vision_transformer(c)
                                                   : detail::make_modified_resnet(c));
  transformer_ = register_module("transformer", std::make_shared<detail::Transformer>(
                                                    c.transformer_width, c.transformer_layers,
                                                    c.transformer_heads, c));
  auto embedding = register_module("token_embedding", torch::nn::Embedding(c.vocab_size, c.transformer_width));
  token_embedding_ = embedding->weight;
  positional_embedding_ =
      register_parameter("positional_embedding", torch::zeros({c.context_length, c.transformer_width}));
  ln_final_ = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.transformer_width})
                                                                   .eps(c.layer_norm_eps)));
  text_projection_ = register_parameter("text_projection", torch::zeros({c.transformer_width, c.embed_dim}));
  logit_scale_ = register_parameter("logit_scale", torch::tensor(std::log(1 / 0.07)));
  for (auto& p : parameters()) p.set_requires_grad(false);  // frozen unless a method says otherwise
  eval();
}

void ClipImpl::train(bool /*on*/) {
  // The backbone always runs in inference mode: BatchNorm keeps its running statistics.
  torch::nn::Module::train(false);
}

std::shared_ptr<torch::nn::Module> ClipImpl::visual() const { return visual_; }

torch::Tensor ClipImpl::encode_image(const torch::Tensor& pixels) {
  if (pixels.dim() != 4 || pixels.size(1) != 3 || pixels.size(2) != config_.image_resolution ||
      pixels.size(3) != config_.image_resolution)
    throw Error("encode_image: expected pixels [N,3," + std::to_string(config_.image_resolution) + "," +
                std::to_string(config_.image_resolution) + "], got " + c10::str(pixels.sizes()));
  return visual_->forward(pixels);
}

torch::Tensor ClipImpl::embed_tokens(const torch::Tensor& tokens) {
  return torch::embedding(token_embedding_, tokens.to(torch::kLong));
}

torch::Tensor ClipImpl::encode_text(const torch::Tensor& tokens) {
  if (tokens.dim() != 2 || tokens.size(1) > config_.context_length)
    throw Error("encode_text: expected token ids [N,L] with L <= " + std::to_string(config_.context_length) +
                ", got " + c10::str(tokens.sizes()));
  if (tokens.scalar_type() != torch::kLong && tokens.scalar_type() != torch::kInt)
    throw Error("encode_text: expected int32 or int64 token ids, got " + std::string(c10::toString(tokens.scalar_type())));
  // The end token has the largest id, so argmax finds it (first occurrence, as torch.argmax).
  auto eot = tokens.argmax(-1);
  const int64_t keep = tokens.size(0) ? eot.max().item<int64_t>() + 1 : tokens.size(1);
  return encode_text_embeddings(embed_tokens(tokens.narrow(1, 0, keep)), eot);
}

torch::Tensor ClipImpl::encode_text_embeddings(const torch::Tensor& embeddings, const torch::Tensor& eot) {
  if (embeddings.dim() != 3 || embeddings.size(2) != config_.transformer_width ||
      embeddings.size(1) > config_.context_length || eot.dim() != 1 || eot.size(0) != embeddings.size(0))
    throw Error("encode_text_embeddings: expected embeddings [N,L<=" + std::to_string(config_.context_length) +
                "," + std::to_string(config_.transformer_width) + "] and end positions [N], got " +
                c10::str(embeddings.sizes()) + " and " + c10::str(eot.sizes()));
  auto positions = eot.to(torch::kLong);
  const int64_t n = embeddings.size(0);
  if (n == 0) return torch::zeros({0, config_.embed_dim}, embeddings.options());
  // Under the causal mask no token after the last end token reaches a pooled feature.
  const int64_t len = std::min<int64_t>(embeddings.size(1), positions.max().item<int64_t>() + 1);
  auto x = with_text_prompts(embeddings.narrow(1, 0, len), positions) +
           positional_embedding_.narrow(0, 0, len).to(embeddings.scalar_type());
  auto mask = torch::full({len, len}, -std::numeric_limits<float>::infinity(), x.options()).triu(1);
  x = transformer_->forward(x, mask);
  auto pooled = x.index({torch::arange(n, positions.options()), positions});  // [N,D]
  return torch::matmul(detail::layer_norm(ln_final_, pooled), text_projection_.to(x.scalar_type()));
}

torch::Tensor ClipImpl::encode_text_prefixed(const torch::Tensor& prefix, const torch::Tensor& suffixes,
                                             const torch::Tensor& eot) {
  const int64_t p = prefix.size(0), w = config_.transformer_width;
  if (prefix.dim() != 2 || prefix.size(1) != w || suffixes.dim() != 3 || suffixes.size(2) != w ||
      eot.dim() != 1 || eot.size(0) != suffixes.size(0) || p + suffixes.size(1) > config_.context_length)
    throw Error("encode_text_prefixed: expected a prefix [p," + std::to_string(w) + "], suffixes [N,s," +
                std::to_string(w) + "] with p+s <= " + std::to_string(config_.context_length) +
                " and end positions [N], got " + c10::str(prefix.sizes()) + ", " + c10::str(suffixes.sizes()) +
                " and " + c10::str(eot.sizes()));
  const int64_t n = suffixes.size(0);
  if (n == 0) return torch::zeros({0, config_.embed_dim}, suffixes.options());
  auto positions = eot.to(torch::kLong);
  const int64_t last_end = positions.max().item<int64_t>();
  if (positions.min().item<int64_t>() < p || last_end >= p + suffixes.size(1))
    throw Error("encode_text_prefixed: every end token must lie in the suffix, after the " + std::to_string(p) +
                "-token prefix and before " + std::to_string(p + suffixes.size(1)));
  // Deep text prompts (positions 1..n) inside the prefix are shared like it; past it, each
  // prompt has its own rows there, so they run whole.
  if (hooks_.text.depth() > 0 && hooks_.text.count() >= p) {
    auto whole = torch::cat({prefix.unsqueeze(0).expand({n, p, w}), suffixes.to(prefix.scalar_type())}, 1);
    return encode_text_embeddings(whole, positions);
  }
  const int64_t len = last_end + 1 - p;
  auto x_p = (with_text_prompts(prefix.unsqueeze(0), positions.narrow(0, 0, 1)) +
              positional_embedding_.narrow(0, 0, p).to(prefix.scalar_type()));
  // Both parts in the prefix's dtype (a learned fp32 context with fp16 token embeddings
  // gives fp32 throughout, as the concatenated prompt would).
  auto x_s = suffixes.narrow(1, 0, len).to(prefix.scalar_type()) +
             positional_embedding_.narrow(0, p, len).to(prefix.scalar_type());
  // Each suffix up to its end token, packed: [R,D] rows, R the sum of the lengths.
  const auto lengths = positions - p + 1;
  const auto valid = torch::arange(len, positions.options()).unsqueeze(0) < lengths.unsqueeze(1);  // [N,len]
  const detail::SuffixRows rows{torch::nonzero(valid.reshape(-1)).select(1, 0), lengths, len};
  auto mask = torch::full({p + len, p + len}, -std::numeric_limits<float>::infinity(), x_s.options()).triu(1);
  auto pooled = transformer_->forward_prefixed(x_p, x_s.reshape({n * len, w}).index_select(0, rows.slot), mask, rows);
  return torch::matmul(detail::layer_norm(ln_final_, pooled), text_projection_.to(pooled.scalar_type()));
}

torch::Tensor ClipImpl::logits(const torch::Tensor& image_features, const torch::Tensor& text_features) {
  auto img = image_features / image_features.norm(2, -1, true);
  auto txt = text_features / text_features.norm(2, -1, true);
  return logit_scale_.exp() * torch::matmul(img, txt.t());
}

torch::Tensor ClipImpl::logit_scale() const { return logit_scale_; }

int64_t ClipImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

void ClipImpl::load_weights(const TensorMap& sd, const std::string& where) {
  torch::NoGradGuard no_grad;
  std::set<std::string> expected;
  auto copy_in = [&](const std::string& key, torch::Tensor& dst) {
    expected.insert(key);
    auto it = sd.find(key);
    // BatchNorm's step counter plays no part in inference; some exports omit it.
    if (it == sd.end() && key.size() > 19 && key.compare(key.size() - 19, 19, "num_batches_tracked") == 0) return;
    if (it == sd.end()) throw Error(where + ": key '" + key + "' is missing (architecture " + config_.describe() + ")");
    if (it->second.sizes() != dst.sizes())
      throw Error(where + ": key '" + key + "' has shape " + c10::str(it->second.sizes()) + ", expected " +
                  c10::str(dst.sizes()));
    dst.copy_(it->second.to(dst.device(), dst.scalar_type()));
  };
  for (auto& item : named_parameters(true)) copy_in(item.key(), item.value());
  for (auto& item : named_buffers(true)) copy_in(item.key(), item.value());
  for (const auto& [key, v] : sd)
    if (!expected.count(key))
      throw Error(where + ": unexpected key '" + key + "' for architecture " + config_.describe());
}

TensorMap ClipImpl::weights() const {
  TensorMap out;
  for (const auto& item : named_parameters(true)) out[item.key()] = item.value().detach();
  for (const auto& item : named_buffers(true)) out[item.key()] = item.value().detach();
  return out;
}

}  // namespace vlmadapt
