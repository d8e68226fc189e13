#include <vlmadapt/adapt/deep_prompts.h>

#include <algorithm>

#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt {

namespace {

int64_t vision_layers(const ClipConfig& c) { return c.vision_vit ? c.vision_layers.at(0) : 0; }

void check_depth(int64_t n, int64_t depth, int64_t layers, const std::string& tower, const std::string& key) {
  if (n < 0) throw Error(tower + " prompt tokens: expected at least 0, got " + std::to_string(n));
  if (n > 0 && (depth < 1 || depth > layers))
    throw Error(key + ": a " + tower + " prompt depth of " + std::to_string(depth) + " is outside [1, " +
                std::to_string(layers) + "], the " + tower + " tower's layers");
}

torch::Tensor normal(int64_t n, int64_t width, double std, torch::Device device) {
  return torch::randn({n, width}, torch::TensorOptions().device(device)) * std;
}

}  // namespace

DeepPromptLearnerImpl::DeepPromptLearnerImpl(Clip clip, const Tokenizer& tokenizer, const DeepPromptOptions& options)
    : clip_(std::move(clip)), tokenizer_(tokenizer), options_(options) {
  const auto& c = clip_->config();
  const int64_t d = c.transformer_width, w = c.vision_width;
  const auto device = clip_->logit_scale().device();
  const auto& key = options.keys;
  if (key.size() != 4) throw Error("DeepPromptOptions.keys: expected 4 names");
  check_depth(options.n_text, options.depth_text, c.transformer_layers, "text", key[2]);
  if (options.n_image > 0 && !c.vision_vit)
    throw Error(key[1] + ": image prompts need a ViT image tower; this model's is a ModifiedResNet (set " + key[1] +
                " = 0)");
  check_depth(options.n_image, options.depth_image, vision_layers(c), "image", key[3]);
  if (options.couple && (options.n_image != options.n_text || options.depth_image != options.depth_text || options.n_text < 1))
    throw Error(key[0] + ", " + key[2] + ": coupled prompts (MaPLe) need the same count >= 1 and depth in both towers, got " +
                std::to_string(options.n_image) + "/" + std::to_string(options.depth_image) + " and " +
                std::to_string(options.n_text) + "/" + std::to_string(options.depth_text));
  const int64_t nt = options.n_text, nv = options.n_image;
  if (nt > 0) {
    auto ids = options.ctx_init.empty() ? torch::Tensor()
                                        : tokenizer_.tokenize({options.ctx_init}, c.context_length, false).to(device);
    const int64_t tokens = ids.defined() ? ids.argmax(-1).item<int64_t>() - 1 : 0;
    if (tokens >= nt) {  // the official rule: the first n_t tokens of the init words
      prompt_words_ = options.ctx_init;
      torch::NoGradGuard no_grad;
      ctx_ = clip_->embed_tokens(ids)[0].narrow(0, 1, nt).clone().to(torch::kFloat);
    } else {
      for (int64_t i = 0; i < nt; ++i) prompt_words_ += i ? " X" : "X";
      ctx_ = normal(nt, d, options.init_std, device);
    }
    ctx_ = register_parameter("ctx", ctx_);
    for (int64_t l = 1; l < options.depth_text; ++l)
      text_deep_.push_back(register_parameter("text_deep_" + std::to_string(l), normal(nt, d, options.init_std, device)));
  } else {
    prompt_words_ = options.ctx_init;  // a fixed hand-written prompt (VPT-deep)
  }
  if (options.couple) {
    proj_ = register_module("proj", torch::nn::Linear(d, w));
    proj_->to(device);
    // All layers' projections start as copies of one (the official deep copy of one Linear).
    torch::nn::Linear first(d, w);
    for (int64_t l = 1; l < options.depth_text; ++l) {
      auto p = register_module("projection_" + std::to_string(l), torch::nn::Linear(d, w));
      torch::NoGradGuard no_grad;
      p->weight.copy_(first->weight);
      p->bias.copy_(first->bias);
      p->to(device);
      projections_.push_back(p);
    }
  } else if (nv > 0) {
    image_ctx_ = register_parameter("image_ctx", normal(nv, w, options.init_std, device));
    for (int64_t l = 1; l < options.depth_image; ++l)
      image_deep_.push_back(register_parameter("image_deep_" + std::to_string(l), normal(nv, w, options.init_std, device)));
  }
}

void DeepPromptLearnerImpl::set_classes(const std::vector<std::string>& classnames) {
  const auto texts = class_prompts(prompt_words_.empty() ? "{}." : prompt_words_ + " {}.", classnames);
  tokens_ = tokenizer_.tokenize(texts, clip_->config().context_length, true).to(clip_->logit_scale().device());
  cached_text_ = torch::Tensor();
}

TowerHooks DeepPromptLearnerImpl::hooks() {
  TowerHooks h;
  if (ctx_.defined()) {
    h.text.tokens.push_back(ctx_);
    for (const auto& t : text_deep_) h.text.tokens.push_back(t);
  }
  if (options_.couple) {
    h.image.tokens.push_back(proj_->forward(ctx_));
    for (size_t l = 0; l < projections_.size(); ++l) h.image.tokens.push_back(projections_[l]->forward(text_deep_[l]));
  } else if (image_ctx_.defined()) {
    h.image.tokens.push_back(image_ctx_);
    for (const auto& t : image_deep_) h.image.tokens.push_back(t);
  }
  return h;
}

torch::Tensor DeepPromptLearnerImpl::text_features() {
  if (!tokens_.defined()) throw Error("DeepPromptLearner: set_classes() was not called");
  const bool frozen = !torch::GradMode::is_enabled();
  if (frozen && cached_text_.defined() && cached_version_ == parameters_version(*this)) return cached_text_;
  auto features = [&] {
    HooksScope scope(*clip_, hooks());
    return clip_->encode_text(tokens_);
  }();
  if (frozen) {
    cached_text_ = features;
    cached_version_ = parameters_version(*this);
  }
  return features;
}

torch::Tensor DeepPromptLearnerImpl::image_features(const torch::Tensor& pixels) {
  TowerHooks h = hooks();
  h.text = {};
  HooksScope scope(*clip_, std::move(h));
  return clip_->encode_image(pixels);
}

}  // namespace vlmadapt
