// The arithmetic of the training-free few-shot adapters (METHODS.md §11, PROMPT_LEARNERS.md
// §5-§7): Tip-Adapter's cache and its alpha/beta search, GDA's shared-covariance
// classifier and its alpha search, ZPE's prompt scores and weights. Small free functions on
// tensors, in one place, so that methods/tip_adapter.h, tip_adapter_f.h, gda.h, lp_pp.h,
// clap.h and zpe.h share them and tests/test_fewshot.cpp checks them by hand.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include <vlmadapt/adapt/method.h>

namespace vlmadapt::fewshot {

// Rows scaled to unit L2 norm, as float.
torch::Tensor normalized(const torch::Tensor& rows);
// Top-1 accuracy (fraction) of logits [N,C] against labels [N].
double accuracy(const torch::Tensor& logits, const torch::Tensor& labels);
// {lo + i (hi - lo) / n : i = 0..n-1}: Tip-Adapter's search grid (hi itself is not in it).
std::vector<double> tip_grid(double lo, double hi, int n);

// Tip-Adapter's cache logits [B,C]: exp(-beta (1 - A)) summed per class, where A [B,N] is
// the affinity of each query with each cache key and `values` [N] the keys' classes (the
// one-hot value matrix, applied as a per-class sum).
torch::Tensor tip_cache_logits(const torch::Tensor& affinity, const torch::Tensor& values, int64_t classes, double beta);

struct TipChoice {
  double alpha = 0, beta = 0, accuracy = -1;
};
// Tip-Adapter's search (main.py search_hp): beta over `betas` (outer), alpha over
// `alphas` (inner); logits = zero_shot + alpha * cache; the first strict maximum of
// accuracy on (affinity, labels) -- the validation split -- wins.
TipChoice tip_search(const torch::Tensor& zero_shot, const torch::Tensor& affinity, const torch::Tensor& values,
                     const torch::Tensor& labels, const std::vector<double>& alphas, const std::vector<double>& betas);

// GDA (ICLR 2024 §5.2): class means and one shared precision matrix of normalised features.
enum class Shrinkage { Ks, None };
inline const std::vector<std::pair<Shrinkage, std::string>>& enum_names(Shrinkage) {
  static const std::vector<std::pair<Shrinkage, std::string>> n{{Shrinkage::Ks, "ks"}, {Shrinkage::None, "none"}};
  return n;
}
struct GdaClassifier {
  torch::Tensor weight;  // [C,E] = mu_k Lambda
  torch::Tensor bias;    // [C]   = log(1/C) - mu_k Lambda mu_k / 2
};
// `features` [N,E] normalised, `labels` [N]. Ks: Lambda = E pinv((N-1) S + tr(S) I) with S
// the unbiased covariance of the class-centred features (the official estimator). None:
// Lambda = S^-1, refused (an error naming gda.shrinkage) when S is singular, i.e. with
// fewer than E + C features or collinear ones.
GdaClassifier gda_fit(const torch::Tensor& features, const torch::Tensor& labels, int64_t classes, Shrinkage shrinkage);
// The class means [C,E] of features [N,E] with labels [N].
torch::Tensor class_means(const torch::Tensor& features, const torch::Tensor& labels, int64_t classes);

// The alpha of `grid` with the first strict maximum of accuracy of base + alpha * extra.
double search_alpha(const torch::Tensor& base, const torch::Tensor& extra, const torch::Tensor& labels,
                    const std::vector<double>& grid, double* best_accuracy = nullptr);

// ---- ZPE (Allingham et al. 2023; METHODS.md §10) ---------------------------------

enum class ZpeDebias { Both, Test, Pretrain, None };
// Prompt scores s_p [P]: the mean over images of max_c of l_{i,p,c} - correction_{p,c},
// where l = scale cos(image_i, text_{p,c}) and the correction is the mean logit over the
// test images, over the pretraining images, half their sum (Both), or 0 (None).
// `text` [P,C,E] and both image sets [N,E] normalised; `pretrain` may be empty unless
// the debias mode needs it.
torch::Tensor zpe_scores(const torch::Tensor& text, const torch::Tensor& test, const torch::Tensor& pretrain, double scale,
                         ZpeDebias debias);
// scipy.stats.median_abs_deviation (scale 1): median |x - median_of(x)|, the median of an
// even count being the mean of the two middle values (numpy).
double median_abs_deviation(const torch::Tensor& x);
double median_of(const torch::Tensor& x);
// The prompts kept by the MAD rule, (s_p - median) / MAD > tau ([P] bool); tau <= 0 keeps
// all. When none passes (or MAD = 0) the best-scoring prompt alone is kept.
torch::Tensor zpe_select(const torch::Tensor& scores, double tau);
// Weights [P]: softmax of the kept scores (temperature 1), 0 for the others.
torch::Tensor zpe_weights(const torch::Tensor& scores, const torch::Tensor& kept);
// The weighted classifier [C,E]: sum_p w_p text_p (logits are linear in it; not renormalised).
torch::Tensor weighted_classifier(const torch::Tensor& text, const torch::Tensor& weights);

// ---- the text classifier the adapters start from ------------------------------

// t_k of Tip-Adapter, GDA, LP++ and CLAP: one hand-written template, the dataset's
// ensemble (CLIP's averaging), or `zpe`: ZPE's weighting of the dataset's templates
// (debias = test, no selection; methods/zpe.h has every ZPE option), which scores the
// prompts on the test images' features without their labels.
class TextClassifier {
 public:
  static constexpr const char* kHelp =
      "prompt templates with {} for the class name, '|'-separated; empty = the dataset's first; 'ensemble' = all of "
      "the dataset's, averaged; 'zpe' = all of the dataset's, weighted by ZPE on the unlabelled test images";
  explicit TextClassifier(std::vector<std::string> templates = {}) : templates_(std::move(templates)) {}
  bool uses_zpe() const { return templates_.size() == 1 && templates_[0] == "zpe"; }
  // Encodes the templates for the task's classes (again when the classes change).
  void setup(const TaskContext& task);
  // ZPE: the prompt weights [P] from the unlabelled test features [M,E].
  torch::Tensor zpe_prompt_weights(const torch::Tensor& unlabelled) const;
  // The classifier [C,E]: normalised for hand-written templates; for ZPE the weighted sum
  // of the normalised per-prompt classifiers with `prompt_weights` (what fit() found).
  torch::Tensor weights(const torch::Tensor& prompt_weights = {}) const;
  int64_t prompts() const { return per_prompt_.defined() ? per_prompt_.size(0) : 1; }

 private:
  std::vector<std::string> templates_;
  Clip clip_{nullptr};
  torch::Tensor ensemble_;    // [C,E] hand-written (CLIP's averaging)
  torch::Tensor per_prompt_;  // [P,C,E] normalised, for ZPE
};

// The base of the adapters that start from the text classifier (Tip-Adapter, GDA, LP++):
// the `templates` option's classifier for the task's classes, ZPE's prompt weights (a
// data buffer, so that `eval --run` rebuilds the same classifier), and the class names
// the adapter was fitted for: on other classes (base-to-new's new half) it holds nothing
// and falls back to zero-shot.
class TextAdapter : public Method {
 public:
  TextAdapter(std::vector<std::string> templates, int support_views);
  Contract contract() const override;
  void setup(const TaskContext& task) override;
  void on_state_loaded() override;  // the state was fitted on the classes it is loaded for

 protected:
  // ZPE's weights from the unlabelled test features (when templates = zpe) and the
  // classifier; the task's classes become the fitted ones.
  void fit_text(const FitData& data);
  bool fitted_for_task() const { return classnames_ == fitted_classnames_; }
  // 100 f t^T for normalised features f.
  torch::Tensor zero_shot(const torch::Tensor& f) const { return clip_->logit_scale().exp() * f.mm(classifier_.t()); }

  Clip clip_{nullptr};
  TextClassifier text_;
  int support_views_ = 0;
  uint64_t seed_ = 1;
  torch::Tensor classifier_;      // [C,E] normalised (ZPE: the weighted sum), derived from the task
  torch::Tensor prompt_weights_;  // [P] with templates = zpe, else empty; fitted

 private:
  std::vector<std::string> classnames_, fitted_classnames_;
};

}  // namespace vlmadapt::fewshot
