// What a training-free method's fit() gets (method.h FitData): the support set (the
// few-shot train images and data.support's, as augmented views when the method asks),
// the validation split only when train.selection = val, and the test images' features
// without labels only when the method's contract asks for them.
#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/run_context.h>

namespace vlmadapt {

std::string test_transform_tag(const Recipe& r, int64_t n_px) {
  std::string tag = "test" + std::to_string(n_px);
  if (!r.data.corruption.empty()) tag += "-" + r.data.corruption + std::to_string(r.data.severity);
  return tag;
}

LoaderOptions RunContext::test_loader() const {
  LoaderOptions o;
  o.n_px = static_cast<int>(clip->image_resolution());
  o.batch_size = recipe.eval.batch_size;
  o.workers = recipe.data.workers;
  return o;
}

namespace {

// Features of `items` of `data`: V augmented views (view-major), or the test view.
FeatureSet support_part(RunContext& c, const Dataset& data, const std::vector<Item>& items, int views) {
  if (views == 0) return c.test_features(data, items);
  LoaderOptions o = c.test_loader();
  o.augmentation.size = o.n_px;
  o.augmentation.scale_min = c.recipe.train.scale_min;
  o.augmentation.flip = c.recipe.train.flip;
  o.seed = static_cast<uint64_t>(c.recipe.data.seed);
  return augmented_view_features(c.clip, data, items, o, views, c.cache.get());
}

// Two view-major sets joined image-wise, so that the result is view-major too.
FeatureSet join_views(const FeatureSet& a, const FeatureSet& b, int64_t views) {
  const int64_t e = a.features.size(1);
  auto f = torch::cat({a.features.view({views, -1, e}), b.features.view({views, -1, e})}, 1).reshape({-1, e});
  auto l = torch::cat({a.labels.view({views, -1}), b.labels.view({views, -1})}, 1).reshape({-1});
  return {f, l};
}

}  // namespace

FitData fit_data(RunContext& c) {
  const Contract contract = c.method->contract();
  const DataOptions& data = c.recipe.data;
  if (!data.support.empty() && !contract.fits)
    throw Error("data.support: method " + c.recipe.method + " does not fit a support set (only training-free methods take one)");
  if (data.support_mode == "replace" && data.support.empty())
    throw Error("data.support_mode = replace: data.support names no folder to replace the few-shot images with");
  FitData d;
  d.selection = c.recipe.train.selection;
  d.views = std::max(1, contract.support_views);
  d.support = {torch::zeros({0, c.clip->embed_dim()}), torch::zeros({0}, torch::kLong)};
  if (contract.support_views < 0 && !data.support.empty())
    throw Error("data.support: method " + c.recipe.method + " takes no support set");
  const bool with_train = contract.support_views >= 0 && (data.support.empty() || data.support_mode == "add");
  if (with_train) d.support = support_part(c, c.task, c.task.train, contract.support_views);
  if (!data.support.empty()) {
    Dataset extra = open_support_folder(data.support, c.task.classnames);
    FeatureSet more = support_part(c, extra, extra.train, contract.support_views);
    d.support = with_train ? join_views(d.support, more, d.views) : more;
  }
  if (d.selection == Selection::Val)
    d.val = c.test_features(c.task, c.task.val);
  if (contract.unlabelled_test)
    d.unlabelled = c.test_features(c.task, c.task.test).features;
  return d;
}

}  // namespace vlmadapt
