#include <vlmadapt/engine/run_context.h>

#include <filesystem>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/corruption.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/engine/distributed.h>

namespace vlmadapt {
namespace fs = std::filesystem;

torch::Device RunContext::device() const { return clip->logit_scale().device(); }

TaskContext RunContext::task_context(const Dataset& data) const {
  TaskContext t;
  t.clip = clip;
  t.dataset = recipe.data.dataset;
  t.classnames = data.classnames;
  t.templates = data.templates;
  t.device = device();
  t.shots = recipe.data.shots;
  t.seed = static_cast<uint64_t>(recipe.data.seed);
  return t;
}

void RunContext::set_classes(const Dataset& data) { method->setup(task_context(data)); }

TtaViewOptions RunContext::view_options() const {
  TtaViewOptions v;
  v.views = views_per_image(method->contract(), recipe.eval.views);
  v.augmix = recipe.eval.augmix;
  v.scale_min = recipe.eval.scale_min;
  v.extra_views = recipe.eval.extra_views;
  v.n_px = static_cast<int>(clip->image_resolution());
  v.seed = static_cast<uint64_t>(recipe.data.seed);
  return v;
}

EvalSetup eval_setup(const RunContext& c, const Dataset& data, const std::string& out_dir) {
  EvalSetup s;
  s.method = c.method.get();
  s.clip = c.clip;
  s.dataset = &data;
  s.options = c.recipe.eval;
  s.seed = static_cast<uint64_t>(c.recipe.data.seed);
  s.workers = c.recipe.data.workers;
  s.cache = c.cache.get();
  s.transform_tag = test_transform_tag(c.recipe, c.clip->image_resolution());
  s.out_dir = out_dir;
  if (c.method->contract().adapts()) s.views = tta_view_maker(c.view_options());
  return s;
}

FeatureSet RunContext::test_features(const Dataset& data, const std::vector<Item>& items) {
  FeatureCache none("", "");
  return (cache ? *cache : none).features(clip, data, items, test_loader(), test_transform_tag(recipe, clip->image_resolution()));
}

Clip load_model(const ModelOptions& model, std::string* resolved) {
  const std::string path = resolve_checkpoint(model.checkpoint);
  if (resolved) *resolved = path;
  LoadOptions lo;
  lo.device = dist::rank_device(model.device, dist::env_from_environment());  // cuda -> cuda:LOCAL_RANK
  lo.half = model.half;
  return load_clip(path, lo);
}

RunContext attach_method(const Recipe& recipe, Clip clip, Dataset task) {
  RunContext c;
  c.recipe = recipe;
  c.clip = std::move(clip);
  c.task = std::move(task);
  c.method = make_method(recipe.method_options());
  c.set_classes(c.task);
  return c;
}

namespace {

Dataset open_full(const DataOptions& data) {
  Dataset full = open_dataset(data);
  if (!data.corruption.empty()) full = with_corruption(std::move(full), data.corruption, data.severity);
  return full;
}

}  // namespace

RunContext open_run_context(const Recipe& recipe, const std::string& split_file) {
  torch::manual_seed(static_cast<uint64_t>(recipe.data.seed));
  Dataset full = open_full(recipe.data);
  const bool saved = !split_file.empty() && fs::exists(split_file);
  Dataset few = saved ? load_split(full, split_file)
                      : apply_paradigm(full, sample_few_shot(full, recipe.data.shots, recipe.data.val_shots,
                                                             static_cast<uint64_t>(recipe.data.seed)),
                                       recipe.data);
  if (!saved && !split_file.empty()) save_split(few, split_file);
  std::string checkpoint;
  Clip clip = load_model(recipe.model, &checkpoint);
  RunContext c = attach_method(recipe, clip, subsample_classes(few, recipe.data.classes));
  c.checkpoint = checkpoint;
  c.full = std::move(full);
  c.cache = std::make_unique<FeatureCache>((fs::path(recipe.output) / ".cache").string(), checkpoint_id(checkpoint));
  return c;
}

RunContext open_class_context(const Recipe& recipe) {
  std::string checkpoint;
  Clip clip = load_model(recipe.model, &checkpoint);
  Dataset classes = subsample_classes(open_dataset(recipe.data), recipe.data.classes);
  RunContext c = attach_method(recipe, clip, classes);
  c.checkpoint = checkpoint;
  c.full = std::move(classes);
  return c;
}

}  // namespace vlmadapt
