// Test-time adaptation: the views of one test image, and the selection, loss and reward
// arithmetic that TPT, DiffTPT-style filtering and RLCF share (METHODS.md sections 6-8).
// The methods (methods/tpt.h, methods/rlcf.h) compose these; the evaluator builds views.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <vlmadapt/data/dataset.h>

namespace vlmadapt {

// eval.augmix: AugMix on the test-time crops; auto = off for the ImageNet family (as TPT).
enum class AugmixMode { Auto, On, Off };
inline const std::vector<std::pair<AugmixMode, std::string>>& enum_names(AugmixMode) {
  static const std::vector<std::pair<AugmixMode, std::string>> n{
      {AugmixMode::Auto, "auto"}, {AugmixMode::On, "on"}, {AugmixMode::Off, "off"}};
  return n;
}

struct TtaViewOptions {
  int views = 64;               // view 0 (the test view) plus views - 1 augmented ones
  AugmixMode augmix = AugmixMode::Auto;
  double scale_min = 0.08;      // random resized crops' area in [scale_min, 1]
  std::string extra_views;      // folder of extra views, <folder>/<ref dir>/<stem>_<i>.<ext> (DiffTPT)
  int n_px = 224;
  uint64_t seed = 0;
};

// True for ImageNet and its variants, whose TPT views are crops and flips only.
bool imagenet_family(const std::string& dataset);
// Whether the views of `dataset` get AugMix under eval.augmix.
bool uses_augmix(AugmixMode mode, const std::string& dataset);

// The views of one test image, [V,3,n_px,n_px] normalised: view 0 is CLIP's test view;
// then views - 1 random resized crops (bilinear) with flips, AugMix'ed when asked; then,
// with extra_views, every extra image of the item (resized and centre-cropped). Seeded by
// (options.seed, index): the same item at the same position gets the same views.
torch::Tensor tta_views(const Image& image, const std::vector<std::string>& extra_files,
                        const TtaViewOptions& options, bool augmix, uint64_t index);

// The extra view files of every item ref under a folder, found once ("test/12" ->
// folder/test/12_0.png, folder/test/12_1.png, ... in index order).
class ExtraViews {
 public:
  explicit ExtraViews(const std::string& folder);
  const std::vector<std::string>& of(const std::string& ref) const;
  size_t size() const { return files_.size(); }

 private:
  std::map<std::string, std::vector<std::string>> files_;
};

// The view maker of the evaluator for a dataset, or of a stream of files.
std::function<torch::Tensor(const Dataset&, const Item&, int64_t)> tta_view_maker(const TtaViewOptions& options);

namespace tta {

// Entropy of softmax(logits) per row: [V].
torch::Tensor entropy(const torch::Tensor& logits);
// TPT's confidence selection: the int(V * fraction) rows (at least 1) of lowest entropy.
torch::Tensor confident_views(const torch::Tensor& logits, double fraction);
// DiffTPT's filter: row 0 plus the int((V - 1) * fraction) other rows whose logits are
// most cosine-similar to row 0's.
torch::Tensor similar_views(const torch::Tensor& logits, double fraction);
// TPT's loss: the entropy of the probability averaged over rows, in log space:
// log p = logsumexp_i log_softmax(z_i) - log V, clamped at the dtype minimum.
torch::Tensor marginal_entropy(const torch::Tensor& logits);

// RLCF's CLIPScore reward for each sampled class: weight * max(cos(image_i, text_c), 0).
// image [V,E], text [C,E] (any scale), classes [V,K] -> rewards [V,K].
torch::Tensor clip_reward(const torch::Tensor& image, const torch::Tensor& text, const torch::Tensor& classes,
                          double weight = 2.5);
// RLCF's REINFORCE loss: rewards minus each row's mean over its K samples, times the
// cross-entropy of the row's logits at each sampled class, averaged over rows and samples.
torch::Tensor reinforce_loss(const torch::Tensor& logits, const torch::Tensor& classes, const torch::Tensor& rewards);

}  // namespace tta
}  // namespace vlmadapt
