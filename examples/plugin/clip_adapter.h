// clip_adapter: CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with
// Feature Adapters", 2021; gaopengcuhk/CLIP-Adapter). A bottleneck MLP on the frozen image
// features (Linear E->E/r, ReLU, Linear E/r->E, ReLU, no biases), mixed back into them by a
// residual ratio alpha: f' = alpha * A(f) + (1 - alpha) * f. Classes are scored against the
// frozen zero-shot text classifier; only the adapter is trained (the shared loop, cross-entropy).
// Defaults are the paper's image adapter: alpha = 0.2, reduction 4.
//
// An example of a method written outside the vlmadapt tree: see examples/plugin/CMakeLists.txt.
#pragma once
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace my_methods {

struct ClipAdapterOptions {
  double ratio = 0.2;     // alpha: weight of the adapted features in the residual mix
  int64_t reduction = 4;  // bottleneck width = embedding width / reduction
  std::vector<std::string> templates{"a photo of a {}."};
  void bind(vlmadapt::OptionSet& s) {
    s.add("ratio", ratio, "residual ratio alpha: alpha * adapter(f) + (1 - alpha) * f").range(0, 1);
    s.add("reduction", reduction, "bottleneck reduction of the adapter MLP").at_least(1);
    s.add("templates", templates, "prompt templates of the frozen text classifier, separated by '|'");
  }
};

class ClipAdapter : public vlmadapt::Method {
 public:
  explicit ClipAdapter(const ClipAdapterOptions& options) : options_(options) {}

  // Frozen image features in, the adapter trained by the shared loop.
  vlmadapt::Contract contract() const override { return {vlmadapt::Input::Features, /*fits=*/false, /*trains=*/true}; }

  void setup(const vlmadapt::TaskContext& task) override {
    clip_ = task.clip;
    // Built once: a second setup (a new class set) keeps the learned adapter.
    if (adapter_.is_empty()) {
      const int64_t width = clip_->embed_dim();
      const int64_t hidden = std::max<int64_t>(1, width / options_.reduction);
      adapter_ = register_module(
          "adapter", torch::nn::Sequential(torch::nn::Linear(torch::nn::LinearOptions(width, hidden).bias(false)),
                                           torch::nn::ReLU(),
                                           torch::nn::Linear(torch::nn::LinearOptions(hidden, width).bias(false)),
                                           torch::nn::ReLU()));
      adapter_->to(task.device);
    }
    torch::NoGradGuard no_grad;
    classifier_ = vlmadapt::class_text_features(clip_, task.tokenizer, task.classnames, options_.templates);
  }

  torch::Tensor logits(const vlmadapt::Batch& batch) override {
    const auto& f = batch.image_features;
    auto mixed = options_.ratio * adapter_->forward(f) + (1 - options_.ratio) * f;
    return vlmadapt::cosine_logits(clip_, mixed, classifier_);  // normalises the image features
  }

 private:
  ClipAdapterOptions options_;
  vlmadapt::Clip clip_{nullptr};
  torch::nn::Sequential adapter_{nullptr};
  torch::Tensor classifier_;  // [C,E], normalised; derived from the task
};

VLMADAPT_REGISTER_METHOD(ClipAdapter, ClipAdapterOptions, "clip_adapter",
                         "CLIP-Adapter: a residual bottleneck MLP on the frozen image features")

}  // namespace my_methods
