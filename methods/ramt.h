// ramt: Regularized Mask Tuning (R-AMT; Zheng et al., "Regularized Mask Tuning: Uncovering
// Hidden Knowledge in Pre-trained Vision-Language Models", ICCV 2023; wuw2019/R-AMT
// code/trainers/masktuning.py, modules/masklayers.py, loss/reg_loss.py; specs/METHODS.md §5).
// Binary masks on frozen image-tower weights: per masked weight W a real score m (same
// shape, initialised to `scale`), forward W' = W ⊙ B with B = 1[m > threshold], and a
// straight-through gradient ∂L/∂m = ∂L/∂W' ⊙ W. Masked: the ViT's patch embedding conv1,
// every visual block's attn.in_proj_weight and attn.out_proj.weight, and mlp.c_fc / c_proj
// with mask_mlp (the released configs leave it off). The masks are weight modifiers of the
// one shared CLIP (TowerHooks): no tower is copied and the frozen weights are never written.
// The text side is fixed: zero-shot features of one template (CoOp's CUSTOM_TEMPLATES per
// dataset, recipes/datasets [ramt]), class names lowercased and '_' written as ' ' as the code
// does (CLIP's tokenizer lowercases anyway). Since threshold < scale, training starts exactly
// at zero-shot CLIP.
// Loss: CE(logit_scale · cos) + reg_weight · Σ_tensors ‖m‖₂ (the norm, not squared). Gradient
// Dropout Regularity (GDR): g_b = ∇ KL(frozen CLIP's logits, masked ones) at temperature T,
// taken in loss(); after backward, each element of g_a (CE + reg) is kept with probability
// P = (sign(g_a)(g_a + g_b)/(|g_a| + |g_b| + 1e-8) + 1)/2: grad = ((1−λ) + λ·1[P > U]) g_a.
// Where this differs from the code: fp32 throughout (the code's default PREC); the state
// holds the float scores, not the packed bit mask the code saves, so a resumed run goes on
// exactly (evaluation reads only B = 1[m > threshold], as the code's). U comes from a CPU
// generator seeded per step from the run's seed and a step counter saved with the state
// (the code draws from the global CUDA stream), so a killed and resumed run draws the same U.
// The code's masked ModifiedResNet is not supported: RN models are refused naming
// model.checkpoint.
#pragma once
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cctype>

#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

struct RamtOptions {
  double scale = 1e-2;
  double threshold = 5e-3;
  bool mask_conv1 = true;
  bool mask_mlp = false;
  double reg_weight = 1e-4;
  double gdr_lambda = 1.0;
  double gdr_temperature = 1.0;
  std::string templ = "a photo of a {}.";
  void bind(OptionSet& s) {
    s.add("scale", scale, "initial value of every mask score (MASK.SCALE)").above(0);
    s.add("threshold", threshold, "a weight is kept where its score is above this (MASK.THRESHOLD); below scale");
    s.add("mask_conv1", mask_conv1, "mask the ViT's patch embedding conv1");
    s.add("mask_mlp", mask_mlp, "also mask mlp.c_fc and mlp.c_proj of every visual block (MASK.MASK_MLP)");
    s.add("reg_weight", reg_weight, "weight of the regulariser sum of ||m||_2 over the score tensors (MASK.LOSS_WEIGHT)")
        .at_least(0);
    s.add("gdr_lambda", gdr_lambda, "gradient dropout strength; 0 = plain gradients, no teacher pass (GDR_LAMBDA)")
        .range(0, 1);
    s.add("gdr_temperature", gdr_temperature, "temperature T of the KL to the frozen CLIP (GDR_T)").above(0);
    s.add("template", templ, "the one prompt of the fixed class features");
  }
};

class Ramt : public Method {
 public:
  explicit Ramt(const RamtOptions& options) : options_(options) {
    if (options_.threshold >= options_.scale)
      throw Error("ramt.threshold: " + std::to_string(options_.threshold) + " is not below ramt.scale = " +
                  std::to_string(options_.scale) + ", so the initial mask would not keep every weight");
    step_ = register_buffer("gdr_step", torch::zeros({}, torch::kLong));
  }

  Contract contract() const override { return {Input::Pixels, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    seed_ = task.seed;
    if (!clip_->config().vision_vit)
      throw Error("model.checkpoint: ramt masks a ViT image tower; this CLIP's is a ModifiedResNet (" +
                  clip_->config().describe() + "), whose masked version is not supported");
    if (scores_.empty()) build_scores();
    text_ = class_text_features(clip_, task.tokenizer, lowercase_names(task.classnames), {options_.templ});
  }

  torch::Tensor logits(const Batch& batch) override {
    HooksScope scope(*clip_, hooks());
    return cosine_logits(clip_, clip_->encode_image(batch.pixels), text_);
  }

  torch::Tensor loss(const Batch& batch) override {
    auto z = logits(batch);
    auto loss = torch::nn::functional::cross_entropy(z, batch.labels);
    if (options_.reg_weight > 0) loss = loss + options_.reg_weight * regulariser();
    kl_grads_.clear();
    if (options_.gdr_lambda > 0)
      kl_grads_ = torch::autograd::grad({distillation(z, batch.pixels)}, score_tensors(), {}, /*retain_graph=*/true,
                                        /*create_graph=*/false, /*allow_unused=*/true);
    return loss;
  }

  // The share of masked-off weights, in percent (the code prints it as "Sparsity"), in run.json.
  std::map<std::string, double> chosen() const override {
    torch::NoGradGuard no_grad;
    double off = 0, total = 0;
    for (const auto& s : scores_) {
      off += (s.score <= options_.threshold).sum().item<double>();
      total += static_cast<double>(s.score.numel());
    }
    return {{"mask_sparsity_percent", total > 0 ? 100 * off / total : 0}};
  }

  // GDR: each score's gradient g_a (set by the backward of loss()) keeps each element with
  // probability P of agreeing with g_b, the KL's gradient taken in loss().
  void after_backward() override {
    if (!kl_grads_.empty()) {
      const auto params = score_tensors();
      const auto u = uniforms();
      for (size_t i = 0; i < params.size(); ++i)
        if (params[i].grad().defined() && kl_grads_[i].defined())
          params[i].mutable_grad() = gradient_dropout(params[i].grad(), kl_grads_[i], u[i], options_.gdr_lambda);
      kl_grads_.clear();
    }
    torch::NoGradGuard no_grad;
    step_.add_(1);
  }

  // ((1−λ) + λ·1[P > U]) ⊙ g_a with P = (sign(g_a)(g_a + g_b)/(|g_a| + |g_b| + 1e-8) + 1)/2.
  static torch::Tensor gradient_dropout(const torch::Tensor& g_a, const torch::Tensor& g_b, const torch::Tensor& u,
                                        double lambda) {
    const auto p = (torch::sign(g_a) * (g_a + g_b) / (g_a.abs() + g_b.abs() + 1e-8) + 1) / 2;
    return ((1 - lambda) + lambda * (p > u).to(g_a.scalar_type())) * g_a;
  }

  // This step's U ~ Uniform(0,1), one per score tensor, from a generator seeded by the run's
  // seed and the saved step counter: a resumed run draws what the uninterrupted one did.
  // The seed is seed * 1000003 + step: mt19937 keeps only its low 32 bits, which stay
  // distinct for different seeds below 4000 over a million steps.
  std::vector<torch::Tensor> uniforms() const {
    const uint64_t step = static_cast<uint64_t>(step_.item<int64_t>());
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed_ * 1000003u + step);
    std::vector<torch::Tensor> out;
    for (const auto& s : scores_)
      out.push_back(torch::rand(s.score.sizes(), gen, torch::kFloat).to(s.score.device()));
    return out;
  }

  // W' = W ⊙ B, B = 1[m > threshold]; with autograd, B + (m − m.detach()) passes the gradient
  // straight through (∂L/∂m = ∂L/∂W' ⊙ W) and has B's value exactly.
  static torch::Tensor masked(const torch::Tensor& weight, const torch::Tensor& score, double threshold) {
    auto mask = (score > threshold).to(score.scalar_type());
    if (torch::GradMode::is_enabled() && score.requires_grad()) mask = mask + (score - score.detach());
    return weight * mask.to(weight.scalar_type());
  }

  // Σ over the score tensors of ‖m‖₂ (each flattened, as the code's torch.norm(param, 2));
  // loss() weighs it by reg_weight.
  torch::Tensor regulariser() const {
    auto total = torch::zeros({}, scores_.front().score.options());
    for (const auto& s : scores_) total = total + s.score.norm(2);
    return total;
  }

  TowerHooks hooks() const {
    TowerHooks h;
    for (const auto& s : scores_)
      h.modifiers[s.weight] = [score = s.score, t = options_.threshold](const torch::Tensor& w) {
        return masked(w, score, t);
      };
    return h;
  }

  // The masked weights' names, in the order of the score tensors.
  std::vector<std::string> masked_weights() const {
    std::vector<std::string> out;
    for (const auto& s : scores_) out.push_back(s.weight);
    return out;
  }
  const torch::Tensor& text_features() const { return text_; }

  // "Sea_Lion" -> "sea lion", as the code writes class names into its template.
  static std::vector<std::string> lowercase_names(std::vector<std::string> names) {
    for (auto& n : names) {
      std::replace(n.begin(), n.end(), '_', ' ');
      std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
    }
    return names;
  }

 private:
  struct Score {
    std::string weight;  // the masked weight's OpenAI name
    torch::Tensor score;
  };

  void build_scores() {
    std::vector<std::string> names;
    if (options_.mask_conv1) names.push_back("visual.conv1.weight");
    const std::vector<std::string> in_block =
        options_.mask_mlp ? std::vector<std::string>{"attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight",
                                                      "mlp.c_proj.weight"}
                          : std::vector<std::string>{"attn.in_proj_weight", "attn.out_proj.weight"};
    for (int64_t i = 0; i < clip_->config().vision_layers.at(0); ++i)
      for (const auto& n : in_block) names.push_back("visual.transformer.resblocks." + std::to_string(i) + "." + n);
    const auto weights = clip_->named_parameters(true);
    for (const auto& name : names) {
      const auto& w = weights[name];
      auto key = "score_" + name;  // "score_visual_transformer_resblocks_0_attn_in_proj_weight"
      std::replace(key.begin(), key.end(), '.', '_');
      auto init = torch::full(w.sizes(), options_.scale, w.options().dtype(torch::kFloat));
      scores_.push_back({name, register_parameter(key, init)});
    }
  }

  std::vector<torch::Tensor> score_tensors() const {
    std::vector<torch::Tensor> out;
    for (const auto& s : scores_) out.push_back(s.score);
    return out;
  }

  // T² · mean_i CE(softmax(z⁰_i/T), z_i/T), z⁰ the frozen CLIP's logits (no masks).
  torch::Tensor distillation(const torch::Tensor& z, const torch::Tensor& pixels) {
    torch::Tensor z0;
    {
      torch::NoGradGuard no_grad;
      HooksScope frozen(*clip_, {});
      z0 = cosine_logits(clip_, clip_->encode_image(pixels), text_);
    }
    const double t = options_.gdr_temperature;
    return -(torch::softmax(z0 / t, 1) * torch::log_softmax(z / t, 1)).sum(1).mean() * (t * t);
  }

  RamtOptions options_;
  Clip clip_{nullptr};
  uint64_t seed_ = 1;
  std::vector<Score> scores_;
  torch::Tensor text_;   // [C,E] normalised, fixed
  torch::Tensor step_;   // "gdr_step": after_backward calls so far (saved: U's seed)
  std::vector<torch::Tensor> kl_grads_;  // g_b of the current step, per score tensor
};

VLMADAPT_REGISTER_METHOD(Ramt, RamtOptions, "ramt",
                         "R-AMT: learned binary masks on the frozen image tower's attention weights")

}  // namespace vlmadapt::methods
