// dmn: Dual Memory Networks (Zhang et al., CVPR 2024; YBZh/DMN), zero-shot DMN-ZS with
// the training-free static memory of DMN-TF, as specified in shared/specs/TTA_ONLINE.md
// §2. Online: the dynamic memory follows the stream.
// Per test image (32 views: crops of area 0.5-1, AugMix outside the ImageNet family:
// eval.views, eval.scale_min, eval.augmix), s = exp(logit_scale), T the text prototypes:
//   pseudo-label - from the 3 (int(32 * 0.1)) views of lowest entropy -sum p log(p + 1e-6):
//             p_bar = mean of their softmaxes, label = argmax, h = -sum p_bar log(p_bar + 1e-8);
//   write   - before predicting (§0.5), view 0's feature f_0 (not the confident views) into
//             the label's 50-slot memory: the next free slot, else over the slot of largest
//             entropy when h is below it, else nothing;
//   read    - per class, over its filled slots, its text prototype t_c and (DMN-TF) its
//             few-shot features: v_c = normalise(sum_j exp(-5.5 (1 - f_0.k_j)) k_j) (keys are
//             the values); p_dyn = softmax(s v^T f_0). A class with an empty memory reads
//             t_c alone: its zero-shot logit;
//   static  - DMN-TF, when the recipe gives a few-shot split (dmn.static_memory = auto:
//             data.shots > 0; on; off): per class {t_c} and its normalised shot features,
//             the same read-out (dmn.static_beta), p_static. With data.shots = 0 the run
//             hands fit() the whole train split, which auto leaves out (DMN-ZS);
//   fuse    - p = p_0 + gamma p_dyn + gamma_static p_static, p_0 = softmax(s f_0 T^T) of view 0.
//             We return log(p / sum p): the same argmax, and softmax gives the fused probability.
// Where we differ from the official code, and why:
//   - gamma is a fixed option (default 1), not searched on the test labels as the official
//     code does after the pass (§2.3; the author confirms); 1 is its most frequent searched
//     value. gamma_static likewise (DMN-TF searches both on the test set);
//   - the averaged probability vector of each slot is not stored: the official code stores
//     it but never reads it, and it would cost C x 50 x C floats;
//   - prompts are dmn.templates (the dataset's first template by default, 'ensemble' for
//     all); the official tip_cupl prompts add the CuPL GPT-3 sentences, which we do not
//     have (§0.3), so compare with a zero-shot baseline of the same templates;
//   - no trained DMN (learned biases), no APE channel selection (off in the shipped runs);
//     fp32 instead of fp16. fit() ignores the validation set (nothing is selected on it).
// State: the memory is registered buffers of fixed shape (keys [C,50,E], entropies [C,50]
// with +inf in an empty slot, counts [C]), bounded on any stream length and carried by
// `--state` files; the static memory is a data buffer [C,S,E] (S = the most shots of a
// class, zero-padded) with its counts [C]. on_stream_begin leaves the memory alone.
#pragma once
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/adapt/tta_cache.h>


namespace vlmadapt::methods {

// dmn.static_memory: whether fit()'s features become DMN-TF's static memory.
enum class StaticMemory { Auto, On, Off };
inline const std::vector<std::pair<StaticMemory, std::string>>& enum_names(StaticMemory) {
  static const std::vector<std::pair<StaticMemory, std::string>> n{
      {StaticMemory::Auto, "auto"}, {StaticMemory::On, "on"}, {StaticMemory::Off, "off"}};
  return n;
}

struct DmnOptions {
  std::vector<std::string> templates;  // empty: the dataset's first template; "ensemble": all
  double selection = 0.1;
  int memory_size = 50;
  double beta = 5.5;
  double gamma = 1.0;
  double gamma_static = 1.0;
  double static_beta = 5.5;
  StaticMemory static_memory = StaticMemory::Auto;
  void bind(OptionSet& s) {
    s.add("templates", templates,
          "prompt templates with {} for the class name, separated by '|'; empty = the dataset's default "
          "template, 'ensemble' = all of the dataset's templates");
    s.add("selection", selection, "share of lowest-entropy views that give the pseudo-label").range(0, 1);
    s.add("memory_size", memory_size, "dynamic memory slots per class").at_least(1);
    s.add("beta", beta, "read-out kernel sharpness of the dynamic memory");
    s.add("gamma", gamma,
          "weight of the dynamic memory's probability (fixed; the official code searches it on test labels)")
        .at_least(0);
    s.add("gamma_static", gamma_static, "weight of the static few-shot memory's probability (DMN-TF)").at_least(0);
    s.add("static_beta", static_beta, "read-out kernel sharpness of the static memory");
    s.add("static_memory", static_memory,
          "DMN-TF's static memory of the few-shot features: auto = when the recipe gives a few-shot split "
          "(data.shots > 0), on, off (DMN-ZS, the dynamic memory only)");
  }
};

class Dmn : public Method {
 public:
  explicit Dmn(const DmnOptions& options) : options_(options) {
    memory_keys_ = register_buffer("memory_keys", torch::zeros({0}));
    memory_entropies_ = register_buffer("memory_entropies", torch::zeros({0}));
    memory_counts_ = register_buffer("memory_counts", torch::zeros({0}, torch::kLong));
    static_keys_ = register_data_buffer("static_keys", torch::zeros({0}));
    static_counts_ = register_buffer("static_counts", torch::zeros({0}, torch::kLong));
  }

  Contract contract() const override { return {Input::Features, true, false, Adaptation::Online}; }

  // Text prototypes; an empty dynamic memory and an empty static memory for the classes.
  void setup(const TaskContext& task) override {
    torch::NoGradGuard no_grad;
    clip_ = task.clip;
    shots_ = task.shots;
    classifier_ = class_text_features(clip_, task.tokenizer, task.classnames, resolve_templates(options_.templates, task))
                      .to(task.device);
    const int64_t c = classifier_.size(0), e = classifier_.size(1);
    auto opts = classifier_.options();
    memory_keys_.set_data(torch::zeros({c, options_.memory_size, e}, opts));
    memory_entropies_.set_data(torch::full({c, options_.memory_size}, std::numeric_limits<float>::infinity(), opts));
    memory_counts_.set_data(torch::zeros({c}, opts.dtype(torch::kLong)));
    static_keys_.set_data(torch::zeros({c, 0, e}, opts));
    static_counts_.set_data(torch::zeros({c}, opts.dtype(torch::kLong)));
  }

  // DMN-TF's static memory: the normalised few-shot features, per class (none for 0 shots).
  using Method::fit;
  void fit(const FitData& data) override {
    const FeatureSet& train = data.support;
    torch::NoGradGuard no_grad;
    const int64_t c = classifier_.size(0), e = classifier_.size(1);
    const bool wanted = options_.static_memory == StaticMemory::On ||
                        (options_.static_memory == StaticMemory::Auto && shots_ > 0);
    if (!wanted || !train.features.defined() || train.features.size(0) == 0) {
      static_keys_.set_data(torch::zeros({c, 0, e}, classifier_.options()));
      static_counts_.zero_();
      return;
    }
    auto f = train.features.to(classifier_.device());
    f = f / f.norm(2, -1, true);
    auto labels = train.labels.to(torch::kCPU);
    auto counts = torch::bincount(labels, {}, c);
    auto keys = torch::zeros({c, counts.max().item<int64_t>(), e}, classifier_.options());
    std::vector<int64_t> next(c, 0);
    for (int64_t i = 0; i < f.size(0); ++i) {
      const int64_t y = labels[i].item<int64_t>();
      keys[y][next[y]++].copy_(f[i]);
    }
    static_keys_.set_data(keys);
    static_counts_.copy_(counts);
  }

  torch::Tensor logits(const Batch& batch) override { return cosine_logits(clip_, batch.image_features, classifier_); }

  torch::Tensor adapt_and_predict(const Batch& views) override {
    torch::NoGradGuard no_grad;
    auto f = views.image_features / views.image_features.norm(2, -1, true);
    const double scale = clip_->logit_scale().exp().item<double>();
    auto z = scale * torch::matmul(f, classifier_.t());  // [V,C]
    auto pseudo = tta::dmn_pseudo_label(z, options_.selection);
    auto f0 = f[0];
    tta::memory_write(memory_keys_, memory_entropies_, memory_counts_, pseudo.label, f0, pseudo.entropy);
    auto p = torch::softmax(z[0], -1) + options_.gamma * torch::softmax(dynamic_readout(f0, scale), -1);
    if (static_keys_.size(1) > 0)
      p = p + options_.gamma_static * torch::softmax(static_readout(f0, scale), -1);
    return torch::log(p / p.sum()).unsqueeze(0);
  }

 private:
  // The text prototype as one always-filled slot per class [C,1,E].
  torch::Tensor text_slot_sum(const torch::Tensor& query, double beta) const {
    auto text = classifier_.unsqueeze(1);
    return tta::kernel_value_sum(query, text, torch::ones({text.size(0), 1}, torch::kBool).to(text.device()), beta);
  }
  torch::Tensor static_sum(const torch::Tensor& query, double beta) const {
    return tta::kernel_value_sum(query, static_keys_, tta::memory_filled(static_counts_, static_keys_.size(1)), beta);
  }
  // Dynamic memory, text slot and few-shot features (DMN-TF appends them to the fixed part).
  torch::Tensor dynamic_readout(const torch::Tensor& query, double scale) const {
    auto sum = tta::kernel_value_sum(query, memory_keys_, tta::memory_filled(memory_counts_, memory_keys_.size(1)),
                                     options_.beta) +
               text_slot_sum(query, options_.beta);
    if (static_keys_.size(1) > 0) sum = sum + static_sum(query, options_.beta);
    return tta::readout_logits(query, sum, scale);
  }
  torch::Tensor static_readout(const torch::Tensor& query, double scale) const {
    return tta::readout_logits(query, text_slot_sum(query, options_.static_beta) + static_sum(query, options_.static_beta),
                               scale);
  }

  DmnOptions options_;
  Clip clip_{nullptr};
  int shots_ = 0;  // the task's few-shot split (0 = none or the whole train split)
  torch::Tensor classifier_;  // [C,E] normalised text prototypes; derived from the task
  torch::Tensor memory_keys_, memory_entropies_, memory_counts_;  // the dynamic memory
  torch::Tensor static_keys_, static_counts_;                     // the few-shot memory
};

VLMADAPT_REGISTER_METHOD(Dmn, DmnOptions, "dmn",
                         "DMN: a dynamic memory of test features (and a static few-shot one) read by attention")

}  // namespace vlmadapt::methods
