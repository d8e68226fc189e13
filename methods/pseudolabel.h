// pseudolabel: prompt tuning on CLIP's own pseudolabels (Menghini et al., "Enhancing CLIP
// with CLIP: exploring pseudolabeling for limited-label prompt tuning", NeurIPS 2023;
// BatsResearch/menghini-enhanceCLIPwithCLIP-code; specs/METHODS.md §9). Under
// data.paradigm = ssl | ul | trzsl the shared loop trains it in rounds on the labelled
// images plus the K most confident unlabelled ones per class (engine/pseudolabels.h).
// Strategies: fpl (one round, K = 16 from zero-shot CLIP), ifpl (10 rounds, K = 16,
// pseudolabels recomputed by each round's model, the prompt restarted from its initial
// value every round), grip (10 rounds, K growing to floor((t+1)|U|/10 / C), restarted too).
// Prompts: textual (16 context vectors ~ N(0, 0.02) before the class name, no template
// and no period, as the code's "X X ... X classname") or visual (16 tokens of width^-0.5 *
// N(0, 1) appended to the image tower's input after the positional embedding: VPT-shallow,
// the backbone's deep-prompt hook at depth 1; the classifier is the template's zero-shot
// text features). Loss: per batch, w_l * CE(labelled) + w_p * CE(pseudolabelled), each a
// mean over its own images, with the code's weights: ssl fpl w_l = |P|/|L|, ssl ifpl and
// grip w_l = |L|/|P| (update_training_set's override), trzsl w_p = |L|/|P|, ul only CE(P).
// Where this follows the paper rather than the code: round 0's zero-shot prompt is the
// template filled in ("a photo of a shirt"), not the code's "a photo of a {}shirt"; the
// visual tokens follow the patches rather than the class token (attention without
// positional terms does not see the order: the same features up to rounding); each round
// truly restarts from the stored initial prompt (the code may warm-start on GPU, a quirk
// the spec marks unverified). The multimodal (UPT) prompt is not ported. fp32.
#pragma once
#include <algorithm>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::methods {

enum class PseudolabelStrategy { Fpl, Ifpl, Grip };
inline const std::vector<std::pair<PseudolabelStrategy, std::string>>& enum_names(PseudolabelStrategy) {
  static const std::vector<std::pair<PseudolabelStrategy, std::string>> n{
      {PseudolabelStrategy::Fpl, "fpl"}, {PseudolabelStrategy::Ifpl, "ifpl"}, {PseudolabelStrategy::Grip, "grip"}};
  return n;
}
enum class PromptModality { Textual, Visual };
inline const std::vector<std::pair<PromptModality, std::string>>& enum_names(PromptModality) {
  static const std::vector<std::pair<PromptModality, std::string>> n{{PromptModality::Textual, "textual"},
                                                                     {PromptModality::Visual, "visual"}};
  return n;
}

struct PseudolabelOptions {
  PseudolabelStrategy strategy = PseudolabelStrategy::Grip;
  PromptModality prompt = PromptModality::Textual;
  int64_t n_ctx = 16;
  int64_t per_class = 16;  // N_PSEUDOSHOTS of fpl and ifpl
  int64_t rounds = 10;     // ifpl and grip: 100 / STEP_QUANTILE
  std::string templ = "a photo of a {}";
  void bind(OptionSet& s) {
    s.add("strategy", strategy, "fpl: fixed pseudolabels, one round; ifpl: recomputed each round; grip: recomputed and grown");
    s.add("prompt", prompt, "textual: context vectors before the class name; visual: tokens in the image tower");
    s.add("n_ctx", n_ctx, "learnable prompt vectors").at_least(1);
    s.add("per_class", per_class, "fpl, ifpl: pseudolabels per class (K)").at_least(1);
    s.add("rounds", rounds, "ifpl, grip: rounds of pseudolabelling and training").at_least(1);
    s.add("template", templ, "the zero-shot prompt of round 0's pseudolabels and of the visual prompt's classifier");
  }
};

class Pseudolabel : public Method {
 public:
  explicit Pseudolabel(const PseudolabelOptions& options) : options_(options) {}

  Contract contract() const override {
    Contract c{visual() ? Input::Pixels : Input::Features, /*fits=*/false, /*trains=*/true};
    c.pseudolabels = true;
    return c;
  }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    zeroshot_ = class_text_features(clip_, task.tokenizer, class_prompts("{}", task.classnames), {options_.templ});
    if (visual()) {
      if (!clip_->config().vision_vit)
        throw Error("pseudolabel.prompt = visual: the image tower is a ModifiedResNet, which takes no prompt tokens");
      if (!prompt_.defined()) {
        const int64_t width = clip_->config().vision_width;
        prompt_ = register_parameter(
            "visual_prompt", torch::randn({options_.n_ctx, width}, zeroshot_.options()) * std::pow(double(width), -0.5));
      }
    } else {
      if (!learner_) {
        PromptLearnerOptions p;
        p.n_ctx = static_cast<int>(options_.n_ctx);
        p.period = false;
        learner_ = register_module("prompt_learner", PromptLearner(clip_, task.tokenizer, p, 0));
      }
      learner_->set_classes(task.classnames);
      prompt_ = learner_->ctx();
    }
    if (!initial_.defined()) initial_ = register_buffer("initial_prompt", prompt_.detach().clone());
  }

  torch::Tensor logits(const Batch& batch) override {
    if (visual()) {
      TowerHooks hooks;
      hooks.image.tokens = {prompt_};
      HooksScope scope(*clip_, hooks);
      return cosine_logits(clip_, clip_->encode_image(batch.pixels), zeroshot_);
    }
    auto text = learner_->text_features();
    return cosine_logits(clip_, batch.image_features, text / text.norm(2, -1, true));
  }

  // Round 0: zero-shot CLIP with the template; later rounds: the model trained so far.
  torch::Tensor pseudolabel_logits(const Batch& batch, int64_t round) override {
    if (round > 0) return logits(batch);
    return cosine_logits(clip_, visual() ? clip_->encode_image(batch.pixels) : batch.image_features, zeroshot_);
  }

  int64_t pseudolabel_rounds() const override { return options_.strategy == PseudolabelStrategy::Fpl ? 1 : options_.rounds; }

  int64_t pseudolabels_per_class(int64_t round, int64_t unlabelled, int64_t classes) const override {
    if (options_.strategy != PseudolabelStrategy::Grip) return options_.per_class;
    const int64_t step = unlabelled / options_.rounds;  // GRIP's num_samples
    return std::min((round + 1) * step / classes, unlabelled / classes);
  }

  void on_round_begin(const PseudolabelRound& r) override {
    if (options_.strategy != PseudolabelStrategy::Fpl) {
      torch::NoGradGuard no_grad;
      prompt_.copy_(initial_);
    }
    const double l = static_cast<double>(r.labelled), p = static_cast<double>(r.pseudolabelled);
    labelled_weight_ = 1, pseudo_weight_ = 1;
    if (l == 0 || p == 0) return;
    if (r.paradigm == "ssl") labelled_weight_ = options_.strategy == PseudolabelStrategy::Fpl ? p / l : l / p;
    if (r.paradigm == "trzsl") pseudo_weight_ = l / p;
  }

  torch::Tensor loss(const Batch& batch) override {
    const auto ce = torch::nn::functional::cross_entropy(
        logits(batch), batch.labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    const auto pseudo = batch.pseudo.defined() ? batch.pseudo : torch::zeros_like(batch.labels, torch::kBool);
    // w_l * mean over the labelled images + w_p * mean over the pseudolabelled ones, the
    // means taken over the global batch: a rank's slice divides its sums by the global
    // counts and by its share n / N, which the trainer multiplies back.
    const double n = static_cast<double>(ce.size(0));
    const double all = batch.global_items ? static_cast<double>(batch.global_items) : n;
    const double pseudos = batch.global_items ? static_cast<double>(batch.global_pseudo) : pseudo.sum().item<double>();
    const double per_labelled = labelled_weight_ / std::max(1.0, all - pseudos) * (all / n);
    const double per_pseudo = pseudo_weight_ / std::max(1.0, pseudos) * (all / n);
    return (ce * torch::where(pseudo, per_pseudo, per_labelled).to(ce.scalar_type())).sum();
  }

  std::pair<double, double> weights() const { return {labelled_weight_, pseudo_weight_}; }

 private:
  bool visual() const { return options_.prompt == PromptModality::Visual; }

  PseudolabelOptions options_;
  Clip clip_{nullptr};
  PromptLearner learner_{nullptr};
  torch::Tensor prompt_;    // the learned prompt: the learner's ctx, or the visual tokens
  torch::Tensor initial_;   // its initial value, restored at every ifpl and grip round
  torch::Tensor zeroshot_;  // [C,E] normalised text features of the template
  double labelled_weight_ = 1, pseudo_weight_ = 1;
};

VLMADAPT_REGISTER_METHOD(Pseudolabel, PseudolabelOptions, "pseudolabel",
                         "FPL, IFPL, GRIP: prompt tuning on CLIP's pseudolabels of unlabelled images")

}  // namespace vlmadapt::methods
