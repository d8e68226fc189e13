// Frozen image features of dataset items, cached on disk for methods that need no
// augmentation. A cache file is keyed by checkpoint, dataset (name, root, corruption)
// and transform; rows are looked up by item reference, so few-shot draws share it.
#pragma once
#include <string>
#include <vector>

#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/loader.h>
#include <vlmadapt/backbone/clip.h>

namespace vlmadapt {

// Frozen image features of a labelled split (training-free fitting, validation).
struct FeatureSet {
  torch::Tensor features;  // [N,E], not normalised
  torch::Tensor labels;    // [N]
};


class FeatureCache {
 public:
  // `dir` = "" disables caching. `checkpoint_id` identifies the weights (checkpoint_id()).
  FeatureCache(std::string dir, std::string checkpoint_id);
  // Features [N,E] of `items` (test view), computing and storing the missing ones.
  FeatureSet features(Clip& clip, const Dataset& dataset, const std::vector<Item>& items,
                      const LoaderOptions& loader, const std::string& transform_tag);

 private:
  std::string file_for(const Dataset& dataset, const std::string& transform_tag) const;
  std::string dir_, checkpoint_id_;
};

// Frozen features of `views` augmented views of each item, view-major ([V*N,E], row
// v*N + i). View v is drawn as the loader's epoch -1-v (a random stream of its own, apart
// from the training epochs'); `augment` gives the seed, crop scale and flip. With a cache,
// each view is stored under a tag naming the view, seed and augmentation, so the loop's
// cached views (train.feature_views) and a method's support views share them.
FeatureSet augmented_view_features(Clip& clip, const Dataset& dataset, const std::vector<Item>& items,
                                   LoaderOptions augment, int views, FeatureCache* cache);

// A short stable id of a checkpoint file: its canonical path, size and modification time.
std::string checkpoint_id(const std::string& path);

// Features of items computed with the frozen image tower, batch by batch, no cache.
FeatureSet compute_features(Clip& clip, const Dataset& dataset, const std::vector<Item>& items,
                            const LoaderOptions& loader);

}  // namespace vlmadapt
