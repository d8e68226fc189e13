#include <vlmadapt/prompts.h>

#include <sstream>

#include <vlmadapt/error.h>

namespace vlmadapt {

std::string fill_template(const std::string& templ, const std::string& classname) {
  const auto pos = templ.find("{}");
  if (pos == std::string::npos) return templ + " " + classname;
  return templ.substr(0, pos) + classname + templ.substr(pos + 2);
}

torch::Tensor class_text_features(Clip& clip, const Tokenizer& tokenizer,
                                  const std::vector<std::string>& classnames,
                                  const std::vector<std::string>& templates, int64_t chunk) {
  if (templates.empty()) throw Error("class_text_features: no prompt templates given");
  torch::NoGradGuard no_grad;
  const auto device = clip->logit_scale().device();
  std::vector<torch::Tensor> per_class;
  std::vector<std::string> texts;
  for (const auto& name : classnames)
    for (const auto& t : templates) texts.push_back(fill_template(t, name));
  const int64_t per = static_cast<int64_t>(templates.size());
  const int64_t step = std::max<int64_t>(per, (chunk / per) * per);  // whole classes per chunk
  std::vector<torch::Tensor> chunks;
  for (int64_t start = 0; start < static_cast<int64_t>(texts.size()); start += step) {
    const auto end = std::min<int64_t>(start + step, static_cast<int64_t>(texts.size()));
    std::vector<std::string> part(texts.begin() + start, texts.begin() + end);
    auto f = clip->encode_text(tokenizer.tokenize(part, clip->config().context_length, true).to(device));
    f = f / f.norm(2, -1, true);
    f = f.view({-1, per, f.size(-1)}).mean(1);
    chunks.push_back(f / f.norm(2, -1, true));
  }
  return torch::cat(chunks, 0);
}

torch::Tensor cosine_logits(Clip& clip, const torch::Tensor& image_features, const torch::Tensor& classifier) {
  auto img = image_features / image_features.norm(2, -1, true);
  return clip->logit_scale().exp() * torch::matmul(img, classifier.t());
}

// ---- PromptLearner ---------------------------------------------------------

namespace {
int64_t count_words(const std::string& s) {
  std::istringstream in(s);
  int64_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}
std::string underscores_to_spaces(std::string s) {
  std::replace(s.begin(), s.end(), '_', ' ');
  return s;
}
}  // namespace

PromptLearnerImpl::PromptLearnerImpl(Clip clip, const Tokenizer& tokenizer, const PromptLearnerOptions& options,
                                     int64_t num_classes_for_csc)
    : clip_(std::move(clip)), tokenizer_(tokenizer), options_(options) {
  const auto width = clip_->text_width();
  auto device = clip_->logit_scale().device();
  torch::Tensor init;
  if (!options.ctx_init.empty()) {
    // CoOp: n_ctx = number of words (one BPE token per word assumed); CSC is ignored.
    prefix_text_ = underscores_to_spaces(options.ctx_init);
    n_ctx_ = count_words(prefix_text_);
    torch::NoGradGuard no_grad;
    auto ids = tokenizer_.tokenize({prefix_text_}, clip_->config().context_length, false).to(device);
    init = clip_->embed_tokens(ids)[0].narrow(0, 1, n_ctx_).clone();
  } else {
    if (options.n_ctx < 1) throw Error("n_ctx: expected at least 1 context vector, got " + std::to_string(options.n_ctx));
    n_ctx_ = options.n_ctx;
    prefix_text_.clear();
    for (int64_t i = 0; i < n_ctx_; ++i) prefix_text_ += i ? " X" : "X";
    auto shape = options.csc ? std::vector<int64_t>{num_classes_for_csc, n_ctx_, width}
                             : std::vector<int64_t>{n_ctx_, width};
    init = torch::randn(shape, torch::TensorOptions().device(device)) * options.init_std;
  }
  ctx_ = register_parameter("ctx", init.to(torch::kFloat));
  if (options.class_token_position != "end" && options.class_token_position != "middle" &&
      options.class_token_position != "front")
    throw Error("class_token_position: expected end, middle or front, got '" + options.class_token_position + "'");
}

void PromptLearnerImpl::set_classes(const std::vector<std::string>& classnames) {
  if (ctx_.dim() == 3 && ctx_.size(0) != static_cast<int64_t>(classnames.size()))
    throw Error("class-specific context holds " + std::to_string(ctx_.size(0)) + " classes, the task has " +
                std::to_string(classnames.size()));
  std::vector<std::string> texts;
  name_lens_.clear();
  for (const auto& raw : classnames) {
    const auto name = underscores_to_spaces(raw);
    name_lens_.push_back(static_cast<int64_t>(tokenizer_.encode(name).size()));
    texts.push_back(prefix_text_ + " " + name + ".");
  }
  torch::NoGradGuard no_grad;
  auto device = clip_->logit_scale().device();
  auto tokens = tokenizer_.tokenize(texts, clip_->config().context_length, true).to(device);
  eot_ = tokens.argmax(-1);
  // Positions after the last end token never reach a feature (causal mask): drop them.
  const int64_t keep = eot_.max().item<int64_t>() + 1;
  auto embedding = clip_->embed_tokens(tokens.narrow(1, 0, keep));
  token_prefix_ = embedding.narrow(1, 0, 1).contiguous();
  token_suffix_ = embedding.narrow(1, 1 + n_ctx_, keep - 1 - n_ctx_).contiguous();
}

std::pair<torch::Tensor, torch::Tensor> PromptLearnerImpl::prompts(const torch::Tensor& ctx) {
  return prompts(ctx, 0, num_classes());
}

std::pair<torch::Tensor, torch::Tensor> PromptLearnerImpl::prompts(const torch::Tensor& ctx_in, int64_t start, int64_t n) {
  if (!token_prefix_.defined()) throw Error("PromptLearner: set_classes() was not called");
  auto ctx = ctx_in.dim() == 2 ? ctx_in.unsqueeze(0).expand({n, -1, -1}) : ctx_in.narrow(0, start, n);
  auto prefixes = token_prefix_.narrow(0, start, n), suffixes = token_suffix_.narrow(0, start, n);
  auto eot = eot_.narrow(0, start, n);
  const auto& pos = options_.class_token_position;
  if (pos == "end") return {torch::cat({prefixes, ctx, suffixes}, 1), eot};
  std::vector<torch::Tensor> rows;
  const int64_t half = n_ctx_ / 2;
  for (int64_t i = 0; i < n; ++i) {
    auto prefix = prefixes[i].unsqueeze(0);
    auto suffix = suffixes[i].unsqueeze(0);
    auto ctx_i = ctx[i].unsqueeze(0);
    const int64_t len = name_lens_[start + i];
    auto name = suffix.narrow(1, 0, len);
    auto rest = suffix.narrow(1, len, suffix.size(1) - len);
    if (pos == "middle")
      rows.push_back(torch::cat({prefix, ctx_i.narrow(1, 0, half), name, ctx_i.narrow(1, half, n_ctx_ - half), rest}, 1));
    else
      rows.push_back(torch::cat({prefix, name, ctx_i, rest}, 1));
  }
  return {torch::cat(rows, 0), eot};
}

torch::Tensor PromptLearnerImpl::encode_classes(const torch::Tensor& ctx, int64_t start, int64_t n) {
  auto [embeddings, eot] = prompts(ctx, start, n);
  return clip_->encode_text_embeddings(embeddings, eot);
}

namespace {

// Text features of all classes, chunk by chunk, keeping no activations: the backward
// pass encodes each chunk again with gradients and backpropagates its slice of the
// incoming gradient. Exact (the same operations run twice); memory stays that of one
// chunk whatever the number of classes.
struct RecomputedTextFeatures : torch::autograd::Function<RecomputedTextFeatures> {
  static torch::Tensor forward(torch::autograd::AutogradContext* actx, torch::Tensor ctx, PromptLearnerImpl* learner) {
    actx->save_for_backward({ctx});
    actx->saved_data["learner"] = reinterpret_cast<int64_t>(learner);
    std::vector<torch::Tensor> parts;
    const int64_t c = learner->num_classes();
    for (int64_t s = 0; s < c; s += learner->chunk)
      parts.push_back(learner->encode_classes(ctx, s, std::min(learner->chunk, c - s)));
    return torch::cat(parts, 0);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* actx,
                                                 torch::autograd::variable_list grad_out) {
    auto* learner = reinterpret_cast<PromptLearnerImpl*>(actx->saved_data["learner"].toInt());
    auto ctx = actx->get_saved_variables()[0];
    auto grad = torch::zeros_like(ctx);
    const int64_t c = learner->num_classes();
    for (int64_t s = 0; s < c; s += learner->chunk) {
      const int64_t n = std::min(learner->chunk, c - s);
      torch::AutoGradMode enable(true);
      auto leaf = ctx.detach().requires_grad_(true);
      auto out = learner->encode_classes(leaf, s, n);
      grad += torch::autograd::grad({out}, {leaf}, {grad_out[0].narrow(0, s, n)})[0];
    }
    return {grad, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor PromptLearnerImpl::text_features(const torch::Tensor& ctx_in) {
  auto ctx = ctx_in.defined() ? ctx_in : ctx_;
  const int64_t c = num_classes();
  if (chunk <= 0 || chunk >= c) return encode_classes(ctx, 0, c);
  if (torch::GradMode::is_enabled() && ctx.requires_grad()) return RecomputedTextFeatures::apply(ctx, this);
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < c; s += chunk) parts.push_back(encode_classes(ctx, s, std::min(chunk, c - s)));
  return torch::cat(parts, 0);
}

}  // namespace vlmadapt
