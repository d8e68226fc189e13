// Batches of preprocessed pixels from a dataset split, decoded and augmented in
// worker threads with prefetch. Every image's augmentation is seeded by
// (seed, epoch, index), so results do not depend on thread scheduling.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include <vlmadapt/data/augment.h>
#include <vlmadapt/data/dataset.h>

namespace vlmadapt {

struct LoaderOptions {
  int n_px = 224;
  int batch_size = 32;
  bool shuffle = false;        // order seeded by (seed, epoch)
  bool drop_last = false;      // CoOp drops the last partial batch when there are enough items
  bool augment = false;        // train_view instead of the test view
  TrainTransform augmentation; // its size is replaced by n_px, so every view is n_px square
  int workers = 2;             // 0 = decode in next() on the calling thread
  int prefetch = 4;            // batches ready ahead
  uint64_t seed = 0;
  int64_t epoch = 0;
  Normalization norm;
  // Data parallel: every rank forms the same batches (same order) and keeps only its
  // contiguous slice of each, items [count*shard/shards, count*(shard+1)/shards).
  int shard = 0;
  int shards = 1;
};

struct PixelBatch {
  at::Tensor pixels;             // float [B,3,n_px,n_px]
  at::Tensor labels;             // int64 [B]
  std::vector<int64_t> indices;  // positions in the item list
};

class BatchLoader {
 public:
  BatchLoader(const Dataset& dataset, std::vector<Item> items, const LoaderOptions& options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch in order; false after the last. Decoding errors are rethrown here (as
  // vlmadapt::Error naming the item and file), and again on every later call.
  bool next(PixelBatch& batch);
  int64_t num_batches() const;
  int64_t num_items() const;  // items the epoch delivers (fewer than given when drop_last drops)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The seed of item `index`'s view in `epoch` (seeded::mix of the three): what
// BatchLoader passes to load_view, so a caller can reproduce one image of a batch.
uint64_t view_seed(uint64_t seed, int64_t epoch, int64_t index);

// One image, seeded view: the augmented training view or the test view, normalised [3,n,n].
at::Tensor load_view(const Dataset& dataset, const Item& item, const LoaderOptions& options,
                     uint64_t view_seed);

}  // namespace vlmadapt
