#include <vlmadapt/adapt/tta.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <memory>

#include <vlmadapt/data/augment.h>
#include <vlmadapt/data/augmix.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/data/image.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace fs = std::filesystem;

bool imagenet_family(const std::string& dataset) { return dataset.rfind("imagenet", 0) == 0; }

bool uses_augmix(AugmixMode mode, const std::string& dataset) {
  return mode == AugmixMode::On || (mode == AugmixMode::Auto && !imagenet_family(dataset));
}

namespace {

// AugMix on top of a crop, mixed after normalisation (TPT's augmix_ops.augmix).
torch::Tensor augmix_view(const cv::Mat& crop, std::mt19937_64& rng) {
  const augmix::Mix mix = augmix::draw_mix(crop, rng);
  auto mixed = torch::zeros({3, crop.rows, crop.cols});
  for (size_t i = 0; i < mix.chains.size(); ++i) mixed += mix.weights[i] * normalize(mix.chains[i]);
  return mix.m * normalize(crop) + (1 - mix.m) * mixed;
}

}  // namespace

torch::Tensor tta_views(const Image& image, const std::vector<std::string>& extra_files, const TtaViewOptions& o,
                        bool use_augmix, uint64_t index) {
  if (o.views < 1) throw Error("eval.views: expected at least 1 view, got " + std::to_string(o.views));
  std::vector<torch::Tensor> views{normalize(test_view(image, o.n_px))};
  std::mt19937_64 rng(seeded::mix(o.seed, index, 0x77a));
  for (int v = 1; v < o.views; ++v) {
    // torchvision's RandomResizedCrop(n_px) default is bilinear; then a flip.
    cv::Mat crop = horizontal_flip(random_resized_crop(image, o.n_px, rng, {o.scale_min, 1.0}, {3.0 / 4, 4.0 / 3}, Resample::Bilinear), rng);
    views.push_back(use_augmix ? augmix_view(crop, rng) : normalize(crop));
  }
  for (const auto& file : extra_files) views.push_back(normalize(test_view(decode_image(file), o.n_px)));
  return torch::stack(views);
}

ExtraViews::ExtraViews(const std::string& folder) {
  if (!is_dir(folder)) throw Error("eval.extra_views: " + folder + " is not a folder");
  std::map<std::string, std::vector<std::pair<long, std::string>>> found;
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    if (!entry.is_regular_file()) continue;
    const fs::path rel = fs::relative(entry.path(), folder);
    const std::string stem = rel.stem().string();
    const auto us = stem.rfind('_');
    if (us == std::string::npos || us + 1 == stem.size()) continue;
    const std::string number = stem.substr(us + 1);
    if (!std::all_of(number.begin(), number.end(), ::isdigit)) continue;
    const std::string ref = (rel.parent_path() / stem.substr(0, us)).generic_string();
    found[ref].emplace_back(std::stol(number), entry.path().string());
  }
  for (auto& [ref, list] : found) {
    std::sort(list.begin(), list.end());
    for (const auto& [i, path] : list) files_[ref].push_back(path);
  }
  if (files_.empty()) throw Error("eval.extra_views: no files named <image>_<i>.<ext> under " + folder);
}

const std::vector<std::string>& ExtraViews::of(const std::string& ref) const {
  static const std::vector<std::string> none;
  // Refs may carry an extension ("n01440764/x.JPEG"); extra views are named by the stem.
  fs::path p(ref);
  auto it = files_.find((p.parent_path() / p.stem()).generic_string());
  return it == files_.end() ? none : it->second;
}

std::function<torch::Tensor(const Dataset&, const Item&, int64_t)> tta_view_maker(const TtaViewOptions& o) {
  std::shared_ptr<ExtraViews> extra = o.extra_views.empty() ? nullptr : std::make_shared<ExtraViews>(o.extra_views);
  return [o, extra](const Dataset& data, const Item& item, int64_t index) {
    static const std::vector<std::string> none;
    return tta_views(data.load(item.ref), extra ? extra->of(item.ref) : none, o, uses_augmix(o.augmix, data.name),
                     static_cast<uint64_t>(index));
  };
}

namespace tta {

torch::Tensor entropy(const torch::Tensor& logits) {
  auto logp = torch::log_softmax(logits, -1);
  return -(logp.exp() * logp).sum(-1);
}

torch::Tensor confident_views(const torch::Tensor& logits, double fraction) {
  const int64_t keep = std::max<int64_t>(1, static_cast<int64_t>(logits.size(0) * fraction));
  return std::get<1>(torch::sort(entropy(logits.detach()), /*stable=*/true, 0, false)).narrow(0, 0, keep);
}

torch::Tensor similar_views(const torch::Tensor& logits, double fraction) {
  auto z = logits.detach();
  const int64_t others = z.size(0) - 1;
  const int64_t keep = static_cast<int64_t>(others * fraction);
  auto sim = torch::cosine_similarity(z.narrow(0, 1, others), z.narrow(0, 0, 1), 1);
  auto top = std::get<1>(torch::sort(sim, /*stable=*/true, 0, true)).narrow(0, 0, keep) + 1;
  return torch::cat({torch::zeros({1}, top.options()), top});
}

torch::Tensor marginal_entropy(const torch::Tensor& logits) {
  auto logp = torch::log_softmax(logits, -1);
  auto avg = torch::logsumexp(logp, 0) - std::log(static_cast<double>(logits.size(0)));
  avg = torch::clamp_min(avg, std::numeric_limits<float>::lowest());
  return -(avg.exp() * avg).sum();
}

torch::Tensor clip_reward(const torch::Tensor& image, const torch::Tensor& text, const torch::Tensor& classes,
                          double weight) {
  auto img = image / image.norm(2, -1, true);
  auto txt = text / text.norm(2, -1, true);
  auto picked = txt.index_select(0, classes.reshape(-1)).view({classes.size(0), classes.size(1), -1});  // [V,K,E]
  auto cos = (picked * img.unsqueeze(1)).sum(-1);
  return weight * torch::clamp_min(cos, 0);
}

torch::Tensor reinforce_loss(const torch::Tensor& logits, const torch::Tensor& classes, const torch::Tensor& rewards) {
  auto advantage = rewards - rewards.mean(1, true);
  auto logp = torch::log_softmax(logits, -1).gather(1, classes);  // [V,K] = -CE
  return (advantage.detach() * -logp).mean();
}

}  // namespace tta
}  // namespace vlmadapt
