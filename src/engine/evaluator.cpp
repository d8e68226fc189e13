#include <vlmadapt/engine/evaluator.h>

#include <filesystem>
#include <iostream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/core/progress.h>

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

std::vector<std::string> refs_of(const std::vector<Item>& items, int64_t start, int64_t n) {
  std::vector<std::string> ids;
  for (int64_t i = start; i < start + n; ++i) ids.push_back(items[i].ref);
  return ids;
}

void eval_features(const EvalSetup& s, const std::vector<Item>& items, MetricAccumulator& acc) {
  Clip clip = s.clip;
  const auto device = s.clip->logit_scale().device();
  FeatureSet fs = s.cache ? s.cache->features(clip, *s.dataset, items, test_loader(s), s.transform_tag)
                          : compute_features(clip, *s.dataset, items, test_loader(s));
  torch::NoGradGuard no_grad;
  const int64_t n = fs.features.size(0), bs = s.options.batch_size;
  for (int64_t start = 0; start < n; start += bs) {
    const int64_t len = std::min(bs, n - start);
    Batch b{{}, fs.features.narrow(0, start, len).to(device), fs.labels.narrow(0, start, len).to(device)};
    acc.add(s.method->logits(b).to(torch::kFloat).cpu(), b.labels.cpu(), refs_of(items, start, len));
  }
}

void eval_pixels(const EvalSetup& s, const std::vector<Item>& items, MetricAccumulator& acc) {
  Clip clip = s.clip;
  const auto device = s.clip->logit_scale().device();
  BatchLoader loader(*s.dataset, items, test_loader(s));
  torch::NoGradGuard no_grad;
  int64_t start = 0;
  for (PixelBatch pb; loader.next(pb);) {
    Batch b = method_batch(*s.method, clip, pb.pixels.to(device), pb.labels.to(device));
    acc.add(s.method->logits(b).to(torch::kFloat).cpu(), pb.labels, refs_of(items, start, pb.labels.size(0)));
    start += pb.labels.size(0);
  }
}

// One test image at a time, in the split's order: the stream of an adapting method.
void eval_per_image(const EvalSetup& s, const std::vector<Item>& items, MetricAccumulator& acc) {
  if (!s.views) throw Error("evaluate: method adapts per sample but no view maker was given");
  const auto device = s.clip->logit_scale().device();
  Progress progress("adapt", static_cast<int64_t>(items.size()), std::cerr);
  ImageStream stream(*s.method, s.clip);
  for (int64_t i = 0; i < static_cast<int64_t>(items.size()); ++i) {
    auto label = torch::full({1}, items[i].label, torch::kLong);
    auto logits = stream.predict(s.views(*s.dataset, items[i], i).to(device), label.to(device));
    acc.add(logits.to(torch::kFloat).cpu(), label, {items[i].ref});
    progress.update(i + 1, std::nan(""), std::nan(""), 1);
  }
  stream.finish();
  progress.finish();
}

}  // namespace

Metrics evaluate(const EvalSetup& s, const std::vector<Item>& items, const std::string& tag) {
  if (!s.method || !s.clip || !s.dataset) throw Error("evaluate: method, clip and dataset are required");
  MetricAccumulator acc(static_cast<int64_t>(s.dataset->classnames.size()), s.options.predictions);
  switch (eval_path(s.method->contract())) {
    case EvalPath::PerImage: eval_per_image(s, items, acc); break;
    case EvalPath::PixelBatches: eval_pixels(s, items, acc); break;
    case EvalPath::CachedFeatures: eval_features(s, items, acc); break;
  }
  if (!s.out_dir.empty()) {
    fs::create_directories(s.out_dir);
    if (s.options.confusion)
      acc.write_confusion_csv((fs::path(s.out_dir) / ("confusion_" + tag + ".csv")).string(), s.dataset->classnames);
    if (s.options.predictions)
      acc.write_predictions_jsonl((fs::path(s.out_dir) / ("predictions_" + tag + ".jsonl")).string());
  }
  return acc.result();
}

}  // namespace vlmadapt
