#include <vlmadapt/adapt/prompts.h>

#include <functional>
#include <sstream>

#include <ATen/Parallel.h>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/core/error.h>

#include "backbone/fused_tower.h"

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

torch::Tensor template_text_features(Clip& clip, const Tokenizer& tokenizer, const std::vector<std::string>& classnames,
                                     const std::vector<std::string>& templates, bool normalise, int64_t chunk) {
  if (templates.empty()) throw Error("template_text_features: no prompt templates given");
  torch::NoGradGuard no_grad;
  const auto device = clip->logit_scale().device();
  std::vector<std::string> texts;  // template-major: row p*C + c
  for (const auto& t : templates)
    for (const auto& name : classnames) texts.push_back(fill_template(t, name));
  std::vector<torch::Tensor> parts;
  for (size_t start = 0; start < texts.size(); start += static_cast<size_t>(chunk)) {
    std::vector<std::string> part(texts.begin() + start, texts.begin() + std::min(texts.size(), start + chunk));
    auto f = clip->encode_text(tokenizer.tokenize(part, clip->config().context_length, true).to(device)).to(torch::kFloat);
    parts.push_back(normalise ? f / f.norm(2, -1, true) : f);
  }
  return torch::cat(parts).view({static_cast<int64_t>(templates.size()), static_cast<int64_t>(classnames.size()), -1});
}

std::vector<std::string> resolve_templates(const std::vector<std::string>& asked, const TaskContext& task) {
  if (asked.size() == 1 && asked[0] == "ensemble") return task.templates;
  if (!asked.empty()) return asked;
  if (task.templates.empty()) return {"a photo of a {}."};
  return {task.templates.front()};
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

std::vector<std::string> class_prompts(const std::string& templ, const std::vector<std::string>& classnames) {
  std::vector<std::string> out;
  for (const auto& name : classnames) out.push_back(fill_template(templ, underscores_to_spaces(name)));
  return out;
}

PromptLearnerImpl::PromptLearnerImpl(Clip clip, const Tokenizer& tokenizer, const PromptLearnerOptions& options,
                                     int64_t num_classes_for_csc)
    : clip_(std::move(clip)), tokenizer_(tokenizer), options_(options) {
  const auto width = clip_->text_width();
  auto device = clip_->logit_scale().device();
  torch::Tensor init;
  if (!options.ctx_init.empty()) {
    // CoOp: n_ctx = number of words (one BPE token per word assumed); CSC is ignored.
    prefix_text_ = underscores_to_spaces(options.ctx_init);
    const int64_t words = count_words(prefix_text_);
    n_ctx_ = words;
    if (options.pad_init) {
      if (words > options.n_ctx)
        throw Error("ctx_init: '" + prefix_text_ + "' has " + std::to_string(words) + " words, more than n_ctx = " +
                    std::to_string(options.n_ctx));
      n_ctx_ = options.n_ctx;
      for (int64_t i = words; i < n_ctx_; ++i) prefix_text_ = "X " + prefix_text_;
    }
    torch::NoGradGuard no_grad;
    auto ids = tokenizer_.tokenize({prefix_text_}, clip_->config().context_length, false).to(device);
    init = clip_->embed_tokens(ids)[0].narrow(0, 1, n_ctx_).clone();
    init.narrow(0, 0, n_ctx_ - words).zero_();
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
    texts.push_back(prefix_text_ + " " + name + (options_.period ? "." : ""));
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
  if (pos == ClassPosition::End) return {torch::cat({prefixes, ctx, suffixes}, 1), eot};
  std::vector<torch::Tensor> rows;
  const int64_t half = n_ctx_ / 2;
  for (int64_t i = 0; i < n; ++i) {
    auto prefix = prefixes[i].unsqueeze(0);
    auto suffix = suffixes[i].unsqueeze(0);
    auto ctx_i = ctx[i].unsqueeze(0);
    const int64_t len = name_lens_[start + i];
    auto name = suffix.narrow(1, 0, len);
    auto rest = suffix.narrow(1, len, suffix.size(1) - len);
    if (pos == ClassPosition::Middle)
      rows.push_back(torch::cat({prefix, ctx_i.narrow(1, 0, half), name, ctx_i.narrow(1, half, n_ctx_ - half), rest}, 1));
    else
      rows.push_back(torch::cat({prefix, name, ctx_i, rest}, 1));
  }
  return {torch::cat(rows, 0), eot};
}

torch::Tensor PromptLearnerImpl::encode_classes(const torch::Tensor& ctx, int64_t start, int64_t n) {
  // With a shared context before the class name, every prompt begins with the same
  // [SOT, ctx]: it runs through the tower once (exact, see encode_text_prefixed).
  if (options_.class_token_position == ClassPosition::End && ctx.dim() == 2) {
    auto prefix = torch::cat({token_prefix_[0], ctx}, 0);
    return clip_->encode_text_prefixed(prefix, token_suffix_.narrow(0, start, n), eot_.narrow(0, start, n));
  }
  auto [embeddings, eot] = prompts(ctx, start, n);
  return clip_->encode_text_embeddings(embeddings, eot);
}

namespace {

// Classes [start, start + n) cut into at most `parts` contiguous ranges.
std::vector<std::pair<int64_t, int64_t>> split_classes(int64_t start, int64_t n, int64_t parts) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t per = (n + parts - 1) / parts;
  for (int64_t s = start; s < start + n; s += per) out.emplace_back(s, std::min(per, start + n - s));
  return out;
}

// Each range's text features and, with graphs, its own leaf copy of ctx and the autograd
// graph between.
struct Graphs {
  std::vector<torch::Tensor> leaves, outs;
};

// fn(i) for i in [0, n): on the CPU one per thread with single-threaded BLAS, else in turn.
// The prompts are many small products that no single operation spreads well over the cores.
void run_parts(bool cpu, int64_t n, const std::function<void(int64_t)>& fn) {
  if (cpu) return detail::parallel_parts(n, fn);
  for (int64_t i = 0; i < n; ++i) fn(i);
}

Graphs encode_parts(PromptLearnerImpl* learner, const torch::Tensor& ctx, int64_t start, int64_t n, bool graphs) {
  const bool cpu = ctx.device().is_cpu();
  const auto ranges = split_classes(start, n, cpu ? std::max(1, at::get_num_threads()) : 1);
  Graphs g;
  g.leaves.resize(ranges.size());
  g.outs.resize(ranges.size());
  run_parts(cpu, static_cast<int64_t>(ranges.size()), [&](int64_t i) {
    torch::AutoGradMode mode(graphs);  // grad mode is per thread
    auto part_ctx = graphs ? ctx.detach().clone().requires_grad_(true) : ctx;  // own storage: ctx may change in place
    if (graphs) g.leaves[i] = part_ctx;
    g.outs[i] = learner->encode_classes(part_ctx, ranges[i].first, ranges[i].second);
  });
  return g;
}

// Text features of all classes without graphs, learner->chunk classes per pass.
torch::Tensor encode_in_chunks(PromptLearnerImpl* learner, const torch::Tensor& ctx) {
  const int64_t c = learner->num_classes(), step = learner->chunk > 0 ? learner->chunk : c;
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < c; s += step) {
    auto chunk = encode_parts(learner, ctx, s, std::min(step, c - s), false).outs;
    parts.insert(parts.end(), chunk.begin(), chunk.end());
  }
  return torch::cat(parts, 0);
}

// The gradient to ctx of <grad, features of the ranges>, the ranges again one per thread.
// `retain`: the graphs may be backpropagated again (they are freed with `g`).
torch::Tensor backward_graphs(const Graphs& g, const torch::Tensor& grad, int64_t offset, const torch::Tensor& like,
                              bool retain) {
  std::vector<torch::Tensor> grads(g.outs.size());
  std::vector<int64_t> rows{offset};  // first row of each range in `grad`
  for (const auto& o : g.outs) rows.push_back(rows.back() + o.size(0));
  run_parts(like.device().is_cpu(), static_cast<int64_t>(g.outs.size()), [&](int64_t i) {
    grads[i] = torch::autograd::grad({g.outs[i]}, {g.leaves[i]}, {grad.narrow(0, rows[i], g.outs[i].size(0))},
                                     retain)[0];
  });
  auto total = torch::zeros_like(like);
  for (const auto& gi : grads) total += gi;
  return total;
}

// Text features of all classes with gradients to ctx. With one chunk (learner->chunk = 0 or
// at least the class count) and without learner->recompute, the graphs are kept for the
// backward pass. With several chunks, or with recompute, the
// forward pass keeps no activations (the fused inference pass) and the backward pass
// encodes each chunk again with gradients and backpropagates its slice of the incoming
// gradient, so memory stays that of one chunk whatever the number of classes. Exact either
// way: the same operations, at most run twice. The graph may be backpropagated more than
// once (TunedPrompt reuses its first step's); ctx is saved as a copy, since the optimizer
// and episodic resets write into the parameter.
struct TextFeatures : torch::autograd::Function<TextFeatures> {
  static torch::Tensor forward(torch::autograd::AutogradContext* actx, torch::Tensor ctx, PromptLearnerImpl* learner) {
    actx->saved_data["ctx"] = ctx.detach().clone();
    actx->saved_data["learner"] = reinterpret_cast<int64_t>(learner);
    const int64_t c = learner->num_classes();
    if (!learner->recompute && (learner->chunk <= 0 || learner->chunk >= c)) {
      Graphs g = encode_parts(learner, ctx, 0, c, true);
      actx->saved_data["leaves"] = g.leaves;
      actx->saved_data["outs"] = g.outs;
      std::vector<torch::Tensor> detached;
      for (const auto& o : g.outs) detached.push_back(o.detach());
      return torch::cat(detached, 0);
    }
    return encode_in_chunks(learner, ctx);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* actx,
                                                 torch::autograd::variable_list grad_out) {
    auto* learner = reinterpret_cast<PromptLearnerImpl*>(actx->saved_data["learner"].toInt());
    auto ctx = actx->saved_data["ctx"].toTensor();
    if (actx->saved_data.count("outs")) {
      Graphs g{actx->saved_data["leaves"].toTensorVector(), actx->saved_data["outs"].toTensorVector()};
      return {backward_graphs(g, grad_out[0], 0, ctx, true), torch::Tensor()};
    }
    auto grad = torch::zeros_like(ctx);
    const int64_t c = learner->num_classes(), step = learner->chunk > 0 ? learner->chunk : c;
    for (int64_t s = 0; s < c; s += step) {
      const int64_t n = std::min(step, c - s);
      grad += backward_graphs(encode_parts(learner, ctx, s, n, true), grad_out[0], s, ctx, false);
    }
    return {grad, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor PromptLearnerImpl::text_features(const torch::Tensor& ctx_in) {
  auto ctx = ctx_in.defined() ? ctx_in : ctx_;
  if (torch::GradMode::is_enabled() && ctx.requires_grad()) return TextFeatures::apply(ctx, this);
  return encode_in_chunks(this, ctx);
}

}  // namespace vlmadapt
