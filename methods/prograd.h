// prograd: Prompt-aligned Gradient (Zhu et al., ICCV 2023; BeierZhu/Prompt-align
// trainers/prograd.py, Dassl.ProGrad prograd_backward_and_update). CoOp whose gradient
// never conflicts with that of distilling zero-shot CLIP (specs/PROMPT_LEARNERS.md §2):
// g_kl = ∇ T²·CE(softmax(z⁰/T), z/T) is taken in loss(); after the cross-entropy's
// backward, g = g_ce - λ <g_ce, ĝ_kl> ĝ_kl per parameter tensor when <g_ce, g_kl> < 0,
// else g_ce. The distillation loss itself is never added to the loss.
// Defaults are the shipped ones: 16 context vectors, zeros then the template's words
// ("X ... X a photo of a {class}."), λ = 1 (the README: 0.8 for 8 and 16 shots on
// Flowers102, DTD and EuroSAT; recipes/datasets set it), T = 1. The template is ProGrad's
// per-dataset one (recipes/datasets/*.ini [prograd] template; else the dataset's first).
// Where this differs from the code: the teacher is the same frozen CLIP in fp32 on the same
// cached frozen features (the code runs a second fp32 CLIP on the same augmented batch,
// which gives the same features); the student is fp32 too (the code's is fp16).
#pragma once
#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

struct ProgradOptions {
  int n_ctx = 16;
  std::string templ;  // the teacher's prompt and the context's initial words
  bool init_from_template = true;
  double lambda = 1.0;
  double temperature = 1.0;
  int64_t text_chunk = 0;
  void bind(OptionSet& s) {
    s.add("n_ctx", n_ctx, "number of learnable context vectors").at_least(1);
    s.add("template", templ, "the teacher's hand-written prompt, ending in '{}.', e.g. 'a type of pet, a photo of "
                             "a {}.'; empty = the dataset's first template");
    s.add("init_from_template", init_from_template,
          "initialise the context as zeros followed by the template's words (else random, std 0.02)");
    s.add("lambda", lambda, "how much of the conflicting component of the gradient is removed").range(0, 1);
    s.add("temperature", temperature, "distillation temperature T").above(0);
    s.add("text_chunk", text_chunk, "classes per text-tower pass (0 = all at once)").at_least(0);
  }
};

class Prograd : public Method {
 public:
  explicit Prograd(const ProgradOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Features, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    const std::string templ =
        resolve_templates(options_.templ.empty() ? std::vector<std::string>{} : std::vector<std::string>{options_.templ},
                          task)
            .front();
    if (!learner_) {
      PromptLearnerOptions prompt;
      prompt.n_ctx = options_.n_ctx;
      if (options_.init_from_template) {
        prompt.ctx_init = template_words(templ);
        prompt.pad_init = true;
      }
      learner_ = register_module("prompt_learner", PromptLearner(clip_, task.tokenizer, prompt, 0));
    }
    learner_->chunk = options_.text_chunk;
    learner_->set_classes(task.classnames);
    torch::NoGradGuard no_grad;  // the teacher's classifier: frozen, derived per class set
    teacher_ = class_text_features(clip_, task.tokenizer, task.classnames, {templ});
  }

  torch::Tensor logits(const Batch& batch) override { return cosine_logits(clip_, batch.image_features, text()); }

  torch::Tensor loss(const Batch& batch) override {
    auto z = logits(batch);
    kl_grads_ = torch::autograd::grad({distillation(z, batch)}, trainable_parameters(), {}, /*retain_graph=*/true,
                                      /*create_graph=*/false, /*allow_unused=*/true);
    return torch::nn::functional::cross_entropy(z, batch.labels);
  }

  void after_backward() override {
    auto params = trainable_parameters();
    for (size_t i = 0; i < params.size() && i < kl_grads_.size(); ++i)
      if (params[i].grad().defined() && kl_grads_[i].defined())
        params[i].mutable_grad() = aligned(params[i].grad(), kl_grads_[i], options_.lambda);
    kl_grads_.clear();
  }

  // T² · mean_i CE(softmax(z⁰_i/T), z_i/T), z⁰ the zero-shot teacher's logits on the same features.
  torch::Tensor distillation(const torch::Tensor& z, const Batch& batch) {
    torch::Tensor z0;
    {
      torch::NoGradGuard no_grad;
      z0 = cosine_logits(clip_, batch.image_features, teacher_);
    }
    const double t = options_.temperature;
    return -(torch::softmax(z0 / t, 1) * torch::log_softmax(z / t, 1)).sum(1).mean() * (t * t);
  }

  // ProGrad's update direction: g_ce without its component against g_kl when they conflict.
  static torch::Tensor aligned(const torch::Tensor& g_ce, const torch::Tensor& g_kl, double lambda) {
    const auto dot = (g_ce * g_kl).sum();
    if (dot.item<double>() >= 0) return g_ce;
    return g_ce - lambda * dot / (g_kl * g_kl).sum() * g_kl;
  }

  // "a type of pet, a photo of a {}." -> "a type of pet, a photo of a": the words before the class.
  static std::string template_words(const std::string& templ) {
    const auto at = templ.find("{}");
    if (at == std::string::npos || templ.find_first_not_of(". ", at + 2) != std::string::npos)
      throw Error("prograd.template: '" + templ + "' must end with the class, as '... {}.' (or set "
                  "prograd.init_from_template = false)");
    auto words = templ.substr(0, at);
    while (!words.empty() && words.back() == ' ') words.pop_back();
    if (words.empty()) throw Error("prograd.template: '" + templ + "' has no words before the class to initialise from");
    return words;
  }

  torch::Tensor text() {
    auto f = learner_->text_features();
    return f / f.norm(2, -1, true);
  }
  const torch::Tensor& teacher() const { return teacher_; }
  PromptLearner& learner() { return learner_; }

 private:
  ProgradOptions options_;
  Clip clip_{nullptr};
  PromptLearner learner_{nullptr};
  torch::Tensor teacher_;  // [C,E] normalised
  std::vector<torch::Tensor> kl_grads_;
};

VLMADAPT_REGISTER_METHOD(Prograd, ProgradOptions, "prograd",
                         "ProGrad: CoOp with gradients kept from conflicting with zero-shot CLIP's")

}  // namespace vlmadapt::methods
