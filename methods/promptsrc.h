// promptsrc: Self-Regulating Prompts (Khattak et al., ICCV 2023; muzairkhattak/PromptSRC
// trainers/promptsrc.py). IVLP deep prompts in both towers (independent, 4 tokens each, depth
// 9; the text ones from "a photo of a") trained with three agreements with frozen CLIP
// (specs/PROMPT_LEARNERS.md §4):
//   L = CE + 25·mean|t̂ - t̃| + 10·mean|f̂ - f̃| + Σ_b KL(softmax(z̃_b) ‖ softmax(z_b)) / (B·C),
// t̃ the frozen text features averaged (unnormalised) over 60 ImageNet templates for every
// dataset, f̃ the frozen image features of the same augmented batch, z̃ their logits. And
// Gaussian prompt aggregation (GPA): after epoch e, θ_GPA += g_e·θ_e with g_e the normal
// pdf N(e; μ, σ²) normalised over e = 1..E; after the last epoch the prompts are θ_GPA.
// Defaults are the base-to-novel config's (vit_b16_c2_ep20_batch4_4+4ctx: μ = 15, σ = 1 for
// its 20 epochs; recipes/promptsrc/ has the few-shot and cross-dataset ones).
// Where this differs from the code: GPA averages the learned prompts only (the code averages
// the whole state dict, frozen CLIP included, which comes back equal up to fp16 rounding);
// the accumulator is part of the saved state, so a killed run resumes exactly. fp32
// throughout (the code's frozen image copy and prompts are fp16).
#pragma once
#include <algorithm>
#include <cmath>

#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/deep_prompts.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/data/dataset.h>

namespace vlmadapt::methods {

struct PromptsrcOptions {
  DeepPromptOptions prompt{4, 4, 9, 9, "a photo of a", 0.02, /*couple=*/false,
                           {"promptsrc.n_ctx_text", "promptsrc.n_ctx_vision",
                            "promptsrc.depth_text", "promptsrc.depth_vision"}};
  double text_loss_weight = 25, image_loss_weight = 10, logits_loss_weight = 1;
  bool gpa = true;
  double gpa_mean = 15, gpa_std = 1;
  void bind(OptionSet& s) {
    s.add("n_ctx_text", prompt.n_text, "learnable tokens per text layer").at_least(0);
    s.add("n_ctx_vision", prompt.n_image, "learnable tokens per image layer").at_least(0);
    s.add("depth_text", prompt.depth_text, "text prompt depth J_t: layer 0 and blocks 1..J_t-1").at_least(1);
    s.add("depth_vision", prompt.depth_image, "image prompt depth J_v").at_least(1);
    s.add("ctx_init", prompt.ctx_init, "words whose first n_ctx_text tokens initialise the layer-0 text prompts");
    s.add("init_std", prompt.init_std, "std of the random initialisation").at_least(0);
    s.add("text_loss_weight", text_loss_weight, "weight of the L1 term between prompted and frozen text features").at_least(0);
    s.add("image_loss_weight", image_loss_weight, "weight of the L1 term between prompted and frozen image features").at_least(0);
    s.add("logits_loss_weight", logits_loss_weight, "weight of KL(frozen logits || prompted logits)").at_least(0);
    s.add("gpa", gpa, "Gaussian prompt aggregation over epochs (off: the last epoch's prompts)");
    s.add("gpa_mean", gpa_mean, "GPA: the epoch (1-based) the Gaussian is centred on");
    s.add("gpa_std", gpa_std, "GPA: the Gaussian's std in epochs").above(0);
  }
};

class Promptsrc : public Method {
 public:
  explicit Promptsrc(const PromptsrcOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Pixels, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (!learner_) {
      learner_ = register_module("prompt_learner", DeepPromptLearner(clip_, task.tokenizer, options_.prompt));
      gpa_ = register_module("gpa", std::make_shared<torch::nn::Module>());
      for (const auto& p : learner_->named_parameters()) gpa_->register_buffer(key(p.key()), torch::zeros_like(p.value()));
    }
    learner_->set_classes(task.classnames);
    torch::NoGradGuard no_grad;  // t̃: frozen, derived per class set, never saved
    auto raw = template_text_features(clip_, task.tokenizer, task.classnames, templates(), /*normalise=*/false);
    frozen_text_ = raw.mean(0);
    frozen_text_ = frozen_text_ / frozen_text_.norm(2, -1, true);
  }

  torch::Tensor logits(const Batch& batch) override {
    auto text = learner_->text_features();
    return cosine_logits(clip_, learner_->image_features(batch.pixels), text / text.norm(2, -1, true));
  }

  torch::Tensor loss(const Batch& batch) override {
    auto t = learner_->text_features();
    t = t / t.norm(2, -1, true);
    auto f = learner_->image_features(batch.pixels);
    f = f / f.norm(2, -1, true);
    torch::Tensor f0;
    {
      torch::NoGradGuard no_grad;  // the frozen image tower on the same augmented batch
      f0 = clip_->encode_image(batch.pixels);
      f0 = f0 / f0.norm(2, -1, true);
    }
    const auto scale = clip_->logit_scale().exp();
    auto z = scale * f.matmul(t.t()), z0 = scale * f0.matmul(frozen_text_.t());
    return torch::nn::functional::cross_entropy(z, batch.labels) +
           options_.text_loss_weight * (t - frozen_text_).abs().mean() +
           options_.image_loss_weight * (f - f0).abs().mean() + options_.logits_loss_weight * agreement(z, z0);
  }

  // Σ_b KL(softmax(z̃_b) ‖ softmax(z_b)) / (B·C), as the code's kl_div(sum) / numel.
  static torch::Tensor agreement(const torch::Tensor& z, const torch::Tensor& z0) {
    auto log_p0 = torch::log_softmax(z0, 1);
    return (log_p0.exp() * (log_p0 - torch::log_softmax(z, 1))).sum() / z.numel();
  }

  void on_epoch_end(int64_t epoch, int64_t epochs) override {
    if (!options_.gpa) return;
    torch::NoGradGuard no_grad;
    const double g = gpa_weight(epoch + 1, epochs, options_.gpa_mean, options_.gpa_std);
    auto sums = gpa_->named_buffers();
    for (const auto& p : learner_->named_parameters()) sums[key(p.key())].add_(p.value(), g);
    if (epoch + 1 == epochs)
      for (const auto& p : learner_->named_parameters()) p.value().copy_(sums[key(p.key())]);
  }

  // g_e = N(e; μ, σ²) / Σ_{e'=1..E} N(e'; μ, σ²).
  static double gpa_weight(int64_t e, int64_t epochs, double mean, double std) {
    auto pdf = [&](double x) { return std::exp(-0.5 * (x - mean) * (x - mean) / (std * std)); };
    double total = 0;
    for (int64_t i = 1; i <= epochs; ++i) total += pdf(static_cast<double>(i));
    if (!(total > 0))
      throw Error("promptsrc.gpa_mean/gpa_std: the Gaussian N(" + std::to_string(mean) + ", " + std::to_string(std) +
                  "²) gives no weight to epochs 1.." + std::to_string(epochs));
    return pdf(static_cast<double>(e)) / total;
  }

  // PromptSRC's IMAGENET_TEMPLATES: the first 60 of CLIP's 80 ImageNet templates, with
  // "a photo of a {}." (CLIP's 40th) moved to the front.
  static std::vector<std::string> templates() {
    auto out = builtin_prompts("ImageNet").templates;
    out.resize(std::min<size_t>(60, out.size()));
    std::stable_partition(out.begin(), out.end(), [](const std::string& t) { return t == "a photo of a {}."; });
    return out;
  }

  DeepPromptLearner& learner() { return learner_; }
  const torch::Tensor& frozen_text() const { return frozen_text_; }

 private:
  static std::string key(std::string name) {
    for (auto& ch : name)
      if (ch == '.') ch = '_';
    return name;
  }
  PromptsrcOptions options_;
  Clip clip_{nullptr};
  DeepPromptLearner learner_{nullptr};
  std::shared_ptr<torch::nn::Module> gpa_;  // the running Σ g_e·θ_e, one buffer per learned tensor
  torch::Tensor frozen_text_;               // [C,E] normalised
};

VLMADAPT_REGISTER_METHOD(Promptsrc, PromptsrcOptions, "promptsrc",
                         "PromptSRC: deep prompts regulated by frozen CLIP, aggregated over epochs")

}  // namespace vlmadapt::methods
