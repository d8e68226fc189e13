#include <vlmadapt/engine/evaluator.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <sstream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/engine/distributed.h>
#include <vlmadapt/engine/stream_order.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace fs = std::filesystem;

namespace {

LoaderOptions test_loader(const EvalSetup& s) {
  LoaderOptions o;
  o.n_px = static_cast<int>(s.clip->image_resolution());
  o.batch_size = s.options.batch_size;
  o.workers = s.workers;
  return o;
}

// The method's logits as the dataset's classes: the chosen columns, and the count checked
// (a learned state made for another class set must not be scored against these labels).
torch::Tensor dataset_logits(const EvalSetup& s, torch::Tensor logits) {
  if (!s.columns.empty()) {
    const auto top = *std::max_element(s.columns.begin(), s.columns.end());
    if (logits.size(1) <= top)
      throw Error("evaluate: the method scores " + std::to_string(logits.size(1)) + " classes; " + s.dataset->name +
                  "'s classes are columns up to " + std::to_string(top) + " of a larger label space");
    logits = logits.index_select(1, torch::tensor(s.columns, torch::kLong).to(logits.device()));
  }
  const auto classes = static_cast<int64_t>(s.dataset->classnames.size());
  if (logits.dim() != 2 || logits.size(1) != classes)
    throw Error("evaluate: the method scores " + std::to_string(logits.dim() == 2 ? logits.size(1) : -1) +
                " classes, but " + s.dataset->name + " has " + std::to_string(classes));
  return logits.to(torch::kFloat).cpu();
}

// Where each batch's logits go: the metrics, or a rank's shard of them.
using Sink = std::function<void(const torch::Tensor& logits, const torch::Tensor& labels, const std::vector<std::string>& ids)>;

Sink into(MetricAccumulator& acc) {
  return [&acc](const torch::Tensor& logits, const torch::Tensor& labels, const std::vector<std::string>& ids) {
    acc.add(logits, labels, ids);
  };
}

std::vector<std::string> refs_of(const std::vector<Item>& items, int64_t start, int64_t n) {
  std::vector<std::string> ids;
  for (int64_t i = start; i < start + n; ++i) ids.push_back(items[i].ref);
  return ids;
}

void eval_features(const EvalSetup& s, const std::vector<Item>& items, const Sink& acc) {
  Clip clip = s.clip;
  const auto device = s.clip->logit_scale().device();
  FeatureSet fs = s.cache ? s.cache->features(clip, *s.dataset, items, test_loader(s), s.transform_tag)
                          : compute_features(clip, *s.dataset, items, test_loader(s));
  torch::NoGradGuard no_grad;
  const int64_t n = fs.features.size(0), bs = s.options.batch_size;
  for (int64_t start = 0; start < n; start += bs) {
    const int64_t len = std::min(bs, n - start);
    Batch b{{}, fs.features.narrow(0, start, len).to(device), fs.labels.narrow(0, start, len).to(device)};
    acc(dataset_logits(s, s.method->logits(b)), b.labels.cpu(), refs_of(items, start, len));
  }
}

void eval_pixels(const EvalSetup& s, const std::vector<Item>& items, const Sink& acc) {
  Clip clip = s.clip;
  const auto device = s.clip->logit_scale().device();
  BatchLoader loader(*s.dataset, items, test_loader(s));
  torch::NoGradGuard no_grad;
  int64_t start = 0;
  for (PixelBatch pb; loader.next(pb);) {
    Batch b = method_batch(*s.method, clip, pb.pixels.to(device), pb.labels.to(device));
    acc(dataset_logits(s, s.method->logits(b)), pb.labels, refs_of(items, start, pb.labels.size(0)));
    start += pb.labels.size(0);
  }
}

// The frozen features of each image's views, kept across the runs of a stream when they
// fit in kViewCacheBytes (the views of an image are the same in every run).
constexpr double kViewCacheBytes = 1024.0 * 1024 * 1024;

// One run: the test images one at a time, in `order` (positions in `items`). Each image's
// views are seeded by its position in the split, so they are the same in every order.
void stream_run(const EvalSetup& s, const std::vector<Item>& items, const std::vector<int64_t>& order,
                std::vector<torch::Tensor>* view_features, const Sink& acc, MetricAccumulator* first,
                Progress& progress, int64_t& done) {
  const auto device = s.clip->logit_scale().device();
  ImageStream stream(*s.method, s.clip);
  for (const int64_t i : order) {
    auto label = torch::full({1}, items[i].label, torch::kLong);
    auto views = s.views(*s.dataset, items[i], i).to(device);
    Batch b;
    if (view_features && (*view_features)[i].defined()) {
      b = Batch{views, (*view_features)[i], label.to(device)};
    } else {
      b = stream.batch(views, label.to(device));
      if (view_features) (*view_features)[i] = b.image_features;
    }
    auto logits = dataset_logits(s, stream.predict(std::move(b)));
    acc(logits, label, {items[i].ref});
    if (first) first->add(logits, label, {items[i].ref});
    progress.update(++done, std::nan(""), std::nan(""), 1);
  }
  stream.finish();
}

bool keep_view_features(const EvalSetup& s, int64_t images) {
  if (s.options.runs < 1 + 1 || s.method->contract().input != Input::Features) return false;
  const double bytes = 4.0 * static_cast<double>(images) * s.options.views * static_cast<double>(s.clip->embed_dim());
  return bytes <= kViewCacheBytes;
}

// Every run of an online method, each from the state it had before the first.
std::vector<std::vector<uint8_t>> eval_online(const EvalSetup& s, const std::vector<Item>& items,
                                              const std::vector<std::vector<int64_t>>& orders,
                                              MetricAccumulator& acc, MetricAccumulator* first) {
  if (!s.views) throw Error("evaluate: method adapts per sample but no view maker was given");
  const int64_t n = static_cast<int64_t>(items.size());
  TensorMap start;
  for (const auto& [key, t] : s.method->state()) start[key] = t.clone();
  std::vector<torch::Tensor> features(keep_view_features(s, n) ? items.size() : 0);
  Progress progress("adapt", n * static_cast<int64_t>(orders.size()), std::cerr);
  int64_t done = 0;
  std::vector<std::vector<uint8_t>> hits;
  for (size_t r = 0; r < orders.size(); ++r) {
    if (r > 0) s.method->load_state(start, "the stream's starting state");
    stream_run(s, items, orders[r], features.empty() ? nullptr : &features, into(acc), r == 0 ? first : nullptr,
               progress, done);
    hits.emplace_back(acc.hits().end() - n, acc.hits().end());
  }
  // Evaluation leaves the method as it found it: the next split starts from there too.
  s.method->load_state(start, "the stream's starting state");
  progress.finish();
  return hits;
}

// The items [begin, end) of the split (positions in `items`) into `acc`.
void eval_range(const EvalSetup& s, const std::vector<Item>& items, int64_t begin, int64_t end, const Sink& acc) {
  switch (eval_path(s.method->contract())) {
    case EvalPath::PerImage: {
      if (!s.views) throw Error("evaluate: method adapts per sample but no view maker was given");
      Progress progress("adapt", end - begin, std::cerr);
      std::vector<int64_t> positions(static_cast<size_t>(end - begin));
      std::iota(positions.begin(), positions.end(), begin);  // the views are seeded by the place in the whole split
      int64_t done = 0;
      MetricAccumulator* none = nullptr;
      stream_run(s, items, positions, nullptr, acc, none, progress, done);
      progress.finish();
      break;
    }
    case EvalPath::PixelBatches:
    case EvalPath::CachedFeatures: {
      const bool whole = begin == 0 && end == static_cast<int64_t>(items.size());
      const std::vector<Item> part = whole ? std::vector<Item>() : std::vector<Item>(items.begin() + begin, items.begin() + end);
      const auto& span = whole ? items : part;
      if (eval_path(s.method->contract()) == EvalPath::PixelBatches) eval_pixels(s, span, acc);
      else eval_features(s, span, acc);
      break;
    }
  }
}

// A method whose predictions do not depend on the order: once, in split order. With
// several ranks each takes a contiguous shard (whole batches, so that every batch is the
// single process's) and the logits are gathered in split order: the same metrics.
std::vector<uint8_t> eval_once(const EvalSetup& s, const std::vector<Item>& items, MetricAccumulator& acc) {
  auto& world = dist::world();
  const int64_t n = static_cast<int64_t>(items.size());
  if (world.size() == 1) {
    eval_range(s, items, 0, n, into(acc));
    return acc.hits();
  }
  const int64_t align = eval_path(s.method->contract()) == EvalPath::PerImage ? 1 : s.options.batch_size;
  std::vector<int64_t> counts;
  for (int r = 0; r < world.size(); ++r) {
    const auto [b, e] = dist::shard_range(n, r, world.size(), align);
    counts.push_back(e - b);
  }
  const auto [begin, end] = dist::shard_range(n, world.rank(), world.size(), align);
  std::vector<torch::Tensor> rows;
  eval_range(s, items, begin, end, [&rows](const torch::Tensor& logits, const torch::Tensor&, const std::vector<std::string>&) {
    rows.push_back(logits.to(torch::kFloat).cpu());
  });
  const auto classes = static_cast<int64_t>(s.columns.empty() ? s.dataset->classnames.size() : s.columns.size());
  torch::Tensor mine = rows.empty() ? torch::zeros({0, classes}) : torch::cat(rows);
  torch::Tensor all = world.all_gather_rows(mine, counts, "the test logits");
  std::vector<int64_t> labels;
  for (const auto& item : items) labels.push_back(item.label);
  if (n > 0) acc.add(all, torch::tensor(labels, torch::kLong), refs_of(items, 0, n));
  return acc.hits();
}

// Run accuracies, their spread and tail, and the running accuracy along the stream.
void stream_statistics(const std::vector<std::vector<uint8_t>>& hits, Metrics& m) {
  const size_t n = hits.front().size();
  if (n == 0) return;
  const size_t points = std::min<size_t>(n, 100);
  for (size_t k = 1; k <= points; ++k) m.stream_positions.push_back(static_cast<int64_t>((k * n + points - 1) / points));
  m.running_top1.assign(points, 0.0);
  for (const auto& run : hits) {
    int64_t correct = 0;
    size_t next = 0;
    for (size_t i = 0; i < n; ++i) {
      correct += run[i];
      if (next < points && static_cast<int64_t>(i + 1) == m.stream_positions[next])
        m.running_top1[next++] += 100.0 * static_cast<double>(correct) / static_cast<double>(i + 1);
    }
    m.run_top1.push_back(100.0 * static_cast<double>(correct) / static_cast<double>(n));
  }
  for (auto& v : m.running_top1) v /= static_cast<double>(hits.size());
  const double mean = std::accumulate(m.run_top1.begin(), m.run_top1.end(), 0.0) / static_cast<double>(hits.size());
  double ss = 0;
  for (double v : m.run_top1) ss += (v - mean) * (v - mean);
  m.top1 = mean;
  m.top1_std = hits.size() > 1 ? std::sqrt(ss / static_cast<double>(hits.size() - 1)) : 0.0;
  m.tail_top1 = tail_mean(m.run_top1);
}

double peak_memory_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace

Metrics evaluate(const EvalSetup& s, const std::vector<Item>& items, const std::string& tag) {
  if (!s.method || !s.clip || !s.dataset) throw Error("evaluate: method, clip and dataset are required");
  if (s.options.runs < 1) throw Error("eval.runs: expected at least 1, got " + std::to_string(s.options.runs));
  const int64_t classes = static_cast<int64_t>(s.dataset->classnames.size());
  std::vector<int64_t> labels;
  for (const auto& item : items) labels.push_back(item.label);
  std::vector<std::vector<int64_t>> orders;
  for (int r = 0; r < s.options.runs; ++r)
    orders.push_back(stream_order(labels, s.options.order, s.options.dirichlet, seeded::mix(s.seed, static_cast<uint64_t>(r))));

  const auto start = std::chrono::steady_clock::now();
  const bool online = s.method->contract().adaptation == Adaptation::Online;
  MetricAccumulator acc(classes, s.options.predictions && !online);
  std::unique_ptr<MetricAccumulator> first;
  if (online && s.options.predictions) first = std::make_unique<MetricAccumulator>(classes, true);
  std::vector<std::vector<uint8_t>> hits;
  if (online) {
    if (dist::world().size() > 1)
      throw Error("evaluate: this method adapts online (its state follows the test stream, which one process must "
                  "see whole); run it in one process, without vlmadapt launch (WORLD_SIZE=" +
                  std::to_string(dist::world().size()) + ")");
    hits = eval_online(s, items, orders, acc, first.get());
  } else {
    const auto in_split_order = eval_once(s, items, acc);
    for (const auto& order : orders) {
      hits.emplace_back();
      for (const int64_t i : order) hits.back().push_back(in_split_order[static_cast<size_t>(i)]);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  Metrics m = acc.result();
  m.count = static_cast<int64_t>(items.size());
  if (!items.empty()) {
    stream_statistics(hits, m);
    m.seconds_per_image = seconds / static_cast<double>(items.size() * (online ? orders.size() : 1));
  }
  m.peak_memory_mb = peak_memory_mb();
  m.order = to_string(s.options.order);
  if (s.options.order == StreamOrder::Dirichlet) {
    std::ostringstream concentration;
    concentration << s.options.dirichlet;
    m.order += " " + concentration.str();
  }
  if (!s.out_dir.empty() && dist::world().main()) {  // every rank holds the same metrics; rank 0 writes
    fs::create_directories(s.out_dir);
    if (s.options.confusion)
      acc.write_confusion_csv((fs::path(s.out_dir) / ("confusion_" + tag + ".csv")).string(), s.dataset->classnames);
    if (s.options.predictions)
      (first ? *first : acc).write_predictions_jsonl((fs::path(s.out_dir) / ("predictions_" + tag + ".jsonl")).string());
  }
  return m;
}

}  // namespace vlmadapt
