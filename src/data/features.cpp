#include <vlmadapt/data/features.h>

#include <filesystem>
#include <functional>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {
namespace fs = std::filesystem;

static std::string hex_hash(const std::string& s) {
  // FNV-1a 64: stable across runs and platforms (std::hash is not).
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string checkpoint_id(const std::string& path) {
  std::error_code ec;
  auto canonical = fs::weakly_canonical(path, ec).string();
  auto size = fs::file_size(path, ec);
  auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return hex_hash(canonical + "|" + std::to_string(size) + "|" + std::to_string(mtime));
}

FeatureSet compute_features(Clip& clip, const Dataset& dataset, const std::vector<Item>& items,
                            const LoaderOptions& loader) {
  torch::NoGradGuard no_grad;
  const auto device = clip->logit_scale().device();
  std::vector<torch::Tensor> feats, labels;
  BatchLoader batches(dataset, items, loader);
  for (PixelBatch b; batches.next(b);) {
    feats.push_back(clip->encode_image(b.pixels.to(device)).to(torch::kFloat).cpu());
    labels.push_back(b.labels);
  }
  if (feats.empty()) return {torch::zeros({0, clip->embed_dim()}), torch::zeros({0}, torch::kLong)};
  return {torch::cat(feats), torch::cat(labels)};
}

FeatureCache::FeatureCache(std::string dir, std::string checkpoint_id)
    : dir_(std::move(dir)), checkpoint_id_(std::move(checkpoint_id)) {}

std::string FeatureCache::file_for(const Dataset& dataset, const std::string& transform_tag) const {
  const std::string key = dataset.name + "|" + dataset.root + "|" + transform_tag;
  return (fs::path(dir_) / checkpoint_id_ / (dataset.name + "-" + hex_hash(key) + ".safetensors")).string();
}

FeatureSet FeatureCache::features(Clip& clip, const Dataset& dataset, const std::vector<Item>& items,
                                  const LoaderOptions& loader, const std::string& transform_tag) {
  if (dir_.empty()) return compute_features(clip, dataset, items, loader);
  const std::string file = file_for(dataset, transform_tag);
  std::vector<std::string> refs;
  torch::Tensor stored;
  if (fs::exists(file)) {
    auto meta = read_safetensors_metadata(file);
    refs = nlohmann::json::parse(meta.at("refs")).get<std::vector<std::string>>();
    stored = read_safetensors(file).at("features");
    if (stored.size(0) != static_cast<int64_t>(refs.size()))
      throw Error(file + ": feature cache is inconsistent (" + std::to_string(stored.size(0)) + " rows, " +
                  std::to_string(refs.size()) + " refs); delete it");
  }
  std::unordered_map<std::string, int64_t> row;
  for (size_t i = 0; i < refs.size(); ++i) row.emplace(refs[i], static_cast<int64_t>(i));
  std::vector<Item> missing;
  for (const auto& item : items)
    if (!row.count(item.ref)) missing.push_back(item);
  if (!missing.empty()) {
    auto fresh = compute_features(clip, dataset, missing, loader);
    for (const auto& item : missing) {
      row.emplace(item.ref, static_cast<int64_t>(refs.size()));
      refs.push_back(item.ref);
    }
    stored = stored.defined() ? torch::cat({stored, fresh.features}) : fresh.features;
    write_safetensors(file, {{"features", stored}}, {{"refs", nlohmann::json(refs).dump()}});
  }
  std::vector<int64_t> index;
  std::vector<int64_t> labels;
  for (const auto& item : items) {
    index.push_back(row.at(item.ref));
    labels.push_back(item.label);
  }
  return {stored.index_select(0, torch::tensor(index, torch::kLong)), torch::tensor(labels, torch::kLong)};
}

FeatureSet augmented_view_features(Clip& clip, const Dataset& dataset, const std::vector<Item>& items,
                                   LoaderOptions augment, int views, FeatureCache* cache) {
  augment.augment = true;
  augment.shuffle = false;
  augment.drop_last = false;
  std::vector<torch::Tensor> feats, labels;
  for (int v = 0; v < views; ++v) {
    augment.epoch = -1 - v;
    const std::string tag = "view" + std::to_string(v) + "-seed" + std::to_string(augment.seed) + "-scale" +
                            std::to_string(augment.augmentation.scale_min) + (augment.augmentation.flip ? "-flip" : "");
    auto fs = cache ? cache->features(clip, dataset, items, augment, tag) : compute_features(clip, dataset, items, augment);
    feats.push_back(fs.features);
    labels.push_back(fs.labels);
  }
  if (feats.empty()) return {torch::zeros({0, clip->embed_dim()}), torch::zeros({0}, torch::kLong)};
  return {torch::cat(feats), torch::cat(labels)};
}

}  // namespace vlmadapt
