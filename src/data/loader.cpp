// BatchLoader: worker threads build whole batches ahead of the consumer into a bounded
// window (`prefetch` batches past the one next() returns next). Batch b always holds the
// same items (the order is fixed up front from (seed, epoch)) and every item's view is
// seeded by (seed, epoch, item index), so the tensors do not depend on the thread count
// or on scheduling; only the time they arrive does.
#include <vlmadapt/data/loader.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include <vlmadapt/core/error.h>

#include "core/seeded.h"

namespace vlmadapt {

namespace {

// Keeps the shuffle stream apart from the per-item view streams of the same seed.
constexpr uint64_t kShuffleTag = 0x53485546464c45ULL;  // "SHUFFLE"

using LoadFn = std::function<Image(const std::string&)>;

// Decode + view + normalise one item; errors get the dataset and item in front.
at::Tensor view_of(const LoadFn& load, const std::string& dataset, const Item& item,
                   const LoaderOptions& options, uint64_t seed) {
  if (!load) throw Error("dataset " + dataset + ": has no image loader");
  try {
    const Image image = load(item.ref);
    cv::Mat rgb;
    if (options.augment) {
      TrainTransform transform = options.augmentation;
      transform.size = options.n_px;
      std::mt19937_64 rng(seed);
      rgb = train_view(image, transform, rng);
    } else {
      rgb = resize_crop(image, options.n_px);
    }
    return normalize(rgb, options.norm);
  } catch (const std::exception& e) {
    throw Error("dataset " + dataset + ", item '" + item.ref + "': " + e.what());
  }
}

void check_options(const LoaderOptions& o) {
  if (o.n_px <= 0) throw Error("loader: n_px must be > 0, got " + std::to_string(o.n_px));
  if (o.batch_size <= 0)
    throw Error("loader: batch_size must be > 0, got " + std::to_string(o.batch_size));
  if (o.workers < 0) throw Error("loader: workers must be >= 0, got " + std::to_string(o.workers));
  if (o.shards < 1 || o.shard < 0 || o.shard >= o.shards)
    throw Error("loader: shard " + std::to_string(o.shard) + " of " + std::to_string(o.shards) + " is out of range");
}

struct Cancelled {};  // thrown inside a worker's build when the loader is stopping

}  // namespace

uint64_t view_seed(uint64_t seed, int64_t epoch, int64_t index) {
  return seeded::mix(seed, uint64_t(epoch), uint64_t(index));
}

at::Tensor load_view(const Dataset& dataset, const Item& item, const LoaderOptions& options,
                     uint64_t view_seed) {
  check_options(options);
  return view_of(dataset.load, dataset.name, item, options, view_seed);
}

struct BatchLoader::Impl {
  struct Slot {
    PixelBatch batch;
    std::exception_ptr error;
  };

  LoadFn load;
  std::string dataset;
  std::vector<Item> items;
  LoaderOptions opt;
  std::vector<int64_t> order;  // item index of each position in the epoch
  int64_t batches = 0;

  std::mutex mu;
  std::condition_variable cv_work, cv_ready;
  std::atomic<bool> stop{false};
  int64_t next_claim = 0;  // next batch a worker takes (under mu)
  int64_t next_out = 0;    // next batch next() returns (under mu)
  std::map<int64_t, Slot> ready;
  std::exception_ptr failed;  // sticky: once a batch failed, next() keeps throwing it
  std::vector<std::thread> threads;

  PixelBatch build(int64_t b) const;
  void work();
  void shut_down();
};

PixelBatch BatchLoader::Impl::build(int64_t b) const {
  const int64_t n = int64_t(order.size());
  const int64_t first = b * opt.batch_size, whole = std::min<int64_t>(opt.batch_size, n - first);
  const int64_t begin = first + whole * opt.shard / opt.shards;
  const int64_t count = first + whole * (opt.shard + 1) / opt.shards - begin;
  PixelBatch out;
  out.pixels = at::empty({count, 3, opt.n_px, opt.n_px}, at::kFloat);
  out.labels = at::empty({count}, at::kLong);
  auto* labels = out.labels.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    if (stop.load(std::memory_order_relaxed)) throw Cancelled{};  // quick exit mid-batch
    const int64_t idx = order[size_t(begin + k)];
    const Item& item = items[size_t(idx)];
    out.pixels[k].copy_(view_of(load, dataset, item, opt, view_seed(opt.seed, opt.epoch, idx)));
    labels[k] = item.label;
    out.indices.push_back(idx);
  }
  return out;
}

void BatchLoader::Impl::work() {
  for (;;) {
    int64_t b = 0;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv_work.wait(lock, [&] {
        return stop || next_claim >= batches || next_claim < next_out + opt.prefetch;
      });
      if (stop || next_claim >= batches) return;
      b = next_claim++;
    }
    Slot slot;
    try {
      slot.batch = build(b);
    } catch (const Cancelled&) {
      return;
    } catch (...) {
      slot.error = std::current_exception();  // handed to the consumer by next()
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      ready.emplace(b, std::move(slot));
    }
    cv_ready.notify_all();
  }
}

void BatchLoader::Impl::shut_down() {
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv_work.notify_all();
  for (std::thread& t : threads)
    if (t.joinable()) t.join();
  threads.clear();
}

BatchLoader::BatchLoader(const Dataset& dataset, std::vector<Item> items,
                         const LoaderOptions& options)
    : impl_(std::make_unique<Impl>()) {
  check_options(options);
  Impl& m = *impl_;
  m.load = dataset.load;
  m.dataset = dataset.name;
  m.items = std::move(items);
  m.opt = options;
  m.opt.prefetch = std::max(1, options.prefetch);
  const int64_t n = int64_t(m.items.size()), bs = options.batch_size;
  // Dassl: drop_last only when there is at least one full batch.
  m.batches = options.drop_last && n >= bs ? n / bs : (n + bs - 1) / bs;
  m.order.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) m.order[size_t(i)] = i;
  if (options.shuffle) {
    std::mt19937_64 rng(seeded::mix(options.seed ^ kShuffleTag, uint64_t(options.epoch)));
    seeded::shuffle(m.order, rng);
  }
  const int64_t threads = std::min<int64_t>(options.workers, m.batches);
  for (int64_t t = 0; t < threads; ++t) m.threads.emplace_back([&m] { m.work(); });
}

BatchLoader::~BatchLoader() { impl_->shut_down(); }

bool BatchLoader::next(PixelBatch& batch) {
  Impl& m = *impl_;
  if (m.failed) std::rethrow_exception(m.failed);
  Impl::Slot slot;
  if (m.threads.empty()) {  // workers = 0: build here
    if (m.next_out >= m.batches) return false;
    try {
      slot.batch = m.build(m.next_out++);
    } catch (...) {
      slot.error = std::current_exception();
    }
  } else {
    std::unique_lock<std::mutex> lock(m.mu);
    if (m.next_out >= m.batches) return false;
    m.cv_ready.wait(lock, [&] { return m.ready.count(m.next_out) > 0; });
    auto node = m.ready.extract(m.next_out++);
    slot = std::move(node.mapped());
    lock.unlock();
    m.cv_work.notify_all();  // the window moved: a worker may start the next batch
  }
  if (slot.error) {
    m.failed = slot.error;
    m.shut_down();
    std::rethrow_exception(m.failed);
  }
  batch = std::move(slot.batch);
  return true;
}

int64_t BatchLoader::num_batches() const { return impl_->batches; }
int64_t BatchLoader::num_items() const {
  return std::min<int64_t>(int64_t(impl_->items.size()), impl_->batches * impl_->opt.batch_size);
}

}  // namespace vlmadapt
