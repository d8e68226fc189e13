// Text-side building blocks shared by the methods: hand-written prompt classifiers
// (zero-shot) and learnable context vectors (CoOp and everything built on it).
// Methods call these; none of them holds a copy of backbone code.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/backbone/tokenizer.h>

namespace vlmadapt {

// "a photo of a {}." with the class name in place of {} (appended when there is no {}).
std::string fill_template(const std::string& templ, const std::string& classname);
// The template filled with each class name, '_' read as ' ' ("sea_lion" -> "a photo of a sea lion.").
std::vector<std::string> class_prompts(const std::string& templ, const std::vector<std::string>& classnames);

// Zero-shot classifier weights [C,E]: per class, the L2-normalised text features of each
// template, averaged and renormalised (CLIP's ensembling). One template gives its
// normalised features. Classes are encoded in chunks of `chunk` prompts to bound memory.
torch::Tensor class_text_features(Clip& clip, const Tokenizer& tokenizer,
                                  const std::vector<std::string>& classnames,
                                  const std::vector<std::string>& templates, int64_t chunk = 256);

// Text features [P,C,E] of every template p and class c, each L2-normalised when
// `normalise` (ZPE's per-prompt classifiers), raw otherwise (CLAP's prototypes average
// raw features).
torch::Tensor template_text_features(Clip& clip, const Tokenizer& tokenizer, const std::vector<std::string>& classnames,
                                     const std::vector<std::string>& templates, bool normalise, int64_t chunk = 256);

// The templates a method's `templates` option names: explicit ones, "ensemble" (all of
// the dataset's), or, when empty, the dataset's first ("a photo of a {}." without one).
struct TaskContext;
std::vector<std::string> resolve_templates(const std::vector<std::string>& asked, const TaskContext& task);

// The sum of the version counters of a module's parameters: it changes whenever one is
// written in place (an optimizer step, load_state), so derived tensors such as text
// features can be cached under it between evaluation batches.
inline int64_t parameters_version(const torch::nn::Module& module) {
  int64_t v = 0;
  for (const auto& p : module.parameters()) v += p._version();
  return v;
}

// exp(logit_scale) * normalise(image) @ classifier^T, with the classifier already normalised.
torch::Tensor cosine_logits(Clip& clip, const torch::Tensor& image_features, const torch::Tensor& classifier);

// Where CoOp puts the class name among the context vectors.
enum class ClassPosition { End, Middle, Front };
inline const std::vector<std::pair<ClassPosition, std::string>>& enum_names(ClassPosition) {
  static const std::vector<std::pair<ClassPosition, std::string>> n{
      {ClassPosition::End, "end"}, {ClassPosition::Middle, "middle"}, {ClassPosition::Front, "front"}};
  return n;
}

struct PromptLearnerOptions {
  int n_ctx = 16;
  std::string ctx_init;                  // e.g. "a photo of a"; sets n_ctx to its token count
  bool csc = false;                      // class-specific context (ignored with ctx_init, as CoOp)
  ClassPosition class_token_position = ClassPosition::End;
  double init_std = 0.02;
  // ProGrad's initialisation: with ctx_init, keep n_ctx vectors, zeros first and the init
  // words' embeddings last; the prompt reads "X ... X <init words> <class>." (BPE tokens of
  // the init words past the n_ctx-th stay fixed). Off: CoOp's rule, n_ctx = the word count.
  bool pad_init = false;
  bool period = true;  // the prompt ends in "." after the class name (CoOp); Menghini et al.'s does not
};

// CoOp's prompt learner: prompts = [SOT, ctx_1..ctx_M, class tokens, ".", EOT] as token
// embeddings, encoded by the frozen text tower from its embedding entry.
class PromptLearnerImpl : public torch::nn::Module {
 public:
  PromptLearnerImpl(Clip clip, const Tokenizer& tokenizer, const PromptLearnerOptions& options,
                    int64_t num_classes_for_csc);
  // Rebuilds the fixed token buffers for a class-name set (keeps ctx).
  void set_classes(const std::vector<std::string>& classnames);
  // Text features [C,E] (not normalised) for the learned ctx, or for `ctx` when given
  // (shape [n_ctx,D] shared by all classes, or [C,n_ctx,D] class-specific).
  torch::Tensor text_features(const torch::Tensor& ctx = {});
  // Prompt embeddings [C,L,D] and end positions [C] for a ctx (for methods that post-process).
  std::pair<torch::Tensor, torch::Tensor> prompts(const torch::Tensor& ctx);
  // The same for classes [start, start + n).
  std::pair<torch::Tensor, torch::Tensor> prompts(const torch::Tensor& ctx, int64_t start, int64_t n);
  // Text features [n,E] of classes [start, start + n) for a ctx.
  torch::Tensor encode_classes(const torch::Tensor& ctx, int64_t start, int64_t n);

  torch::Tensor ctx() const { return ctx_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t num_classes() const { return static_cast<int64_t>(name_lens_.size()); }
  // Classes per text-tower pass (0 = all at once). With gradients, chunks are encoded
  // again in the backward pass instead of keeping their activations, so memory for
  // 1000 classes stays that of one chunk (exact: the same operations run twice).
  int64_t chunk = 0;
  // With gradients, keep no activations even when all classes fit in one chunk: the
  // forward pass runs without graphs and the backward pass encodes again (`chunk`
  // classes at a time, all when 0). For callers that hold many text passes in one step
  // (CoCoOp: one per image), so that a step holds the activations of one pass only.
  bool recompute = false;

 private:
  Clip clip_;
  Tokenizer tokenizer_;
  PromptLearnerOptions options_;
  int64_t n_ctx_;
  std::string prefix_text_;
  torch::Tensor ctx_;                              // registered as "ctx"
  torch::Tensor token_prefix_, token_suffix_, eot_;  // derived per class set
  std::vector<int64_t> name_lens_;
};
TORCH_MODULE(PromptLearner);

}  // namespace vlmadapt
