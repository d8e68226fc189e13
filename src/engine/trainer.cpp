#include <vlmadapt/engine/trainer.h>

#include <ATen/autocast_mode.h>

#include <csignal>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <numeric>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/engine/distributed.h>
#include <vlmadapt/engine/run_context.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace fs = std::filesystem;

double learning_rate(const TrainOptions& o, int64_t epoch, int64_t epochs) {
  const int64_t warm = o.warmup == Warmup::None ? 0 : o.warmup_epochs;
  if (epoch < warm) {
    if (o.warmup == Warmup::Linear) return o.warmup_lr + (o.lr - o.warmup_lr) * static_cast<double>(epoch) / warm;
    return o.warmup_lr;
  }
  if (o.scheduler == Scheduler::Constant) return o.lr;
  const int64_t span = o.scheduler == Scheduler::WarmupCosine ? std::max<int64_t>(1, epochs - warm) : epochs;
  return o.lr * 0.5 * (1 + std::cos(M_PI * static_cast<double>(epoch - warm) / static_cast<double>(span)));
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o, std::vector<torch::Tensor> params) {
  switch (o.optimizer) {
    case Optimizer::Sgd:
      return std::make_unique<torch::optim::SGD>(
          params, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
    case Optimizer::Adam:
      return std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(o.lr).betas({o.adam_beta1, o.adam_beta2}).eps(o.adam_eps).weight_decay(o.weight_decay));
    case Optimizer::AdamW:
      break;
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(o.lr).betas({o.adam_beta1, o.adam_beta2}).eps(o.adam_eps).weight_decay(o.weight_decay));
}

namespace {

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

torch::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// A rank with no items in a batch would have no loss to take the gradient of.
void require_slice(int64_t mine, int64_t whole) {
  if (mine > 0) return;
  throw Error("a batch of " + std::to_string(whole) + " item(s) cannot be split over WORLD_SIZE=" +
              std::to_string(dist::world().size()) + " ranks (rank " + std::to_string(dist::world().rank()) +
              " gets none): use fewer processes or a larger train.batch_size");
}

}  // namespace

Trainer::Trainer(TrainerSetup setup) : s_(std::move(setup)) {
  epochs_ = s_.recipe.train.epochs_for(s_.recipe.data.shots, s_.recipe.data.dataset);
  if (s_.dataset)  // null for callers that only take single steps (the bench)
    for (const Item& it : s_.dataset->train) has_pseudo_ = has_pseudo_ || it.pseudo;
}

void Trainer::mark_pseudo(Batch& batch, const std::vector<int64_t>& positions, int64_t whole) const {
  batch.pseudo = pseudo_flags(positions).to(batch.labels.device());
  batch.global_items = whole;
  auto count = torch::tensor({batch.pseudo.sum().item<int64_t>()}, torch::kLong);
  dist::world().all_reduce_sum({count}, "the batch's pseudolabel count");  // a rank sees its slice only
  batch.global_pseudo = count.item<int64_t>();
}

torch::Tensor Trainer::pseudo_flags(const std::vector<int64_t>& positions) const {
  auto flags = torch::empty({static_cast<int64_t>(positions.size())}, torch::kBool);
  auto* out = flags.data_ptr<bool>();
  for (size_t i = 0; i < positions.size(); ++i) out[i] = s_.dataset->train.at(static_cast<size_t>(positions[i])).pseudo;
  return flags;
}

LoaderOptions Trainer::loader_options(int64_t epoch) const {
  const auto& t = s_.recipe.train;
  LoaderOptions o;
  o.n_px = static_cast<int>(s_.clip->image_resolution());
  o.batch_size = t.batch_size;
  o.shuffle = true;
  o.drop_last = static_cast<int64_t>(s_.dataset->train.size()) >= t.batch_size;  // as Dassl
  o.augment = t.augment;
  o.augmentation.size = o.n_px;
  o.augmentation.scale_min = t.scale_min;
  o.augmentation.flip = t.flip;
  o.workers = s_.recipe.data.workers;
  o.seed = static_cast<uint64_t>(s_.recipe.data.seed);
  o.epoch = epoch;
  return o;  // the whole batches: run_epoch takes this rank's slice of each
}

namespace {

// train.autocast: the forward pass in mixed precision on CUDA (CoOp and TPT train under
// autocast on GPU); on CPU it changes nothing. The loss and the update stay fp32.
class AutocastScope {
 public:
  explicit AutocastScope(bool on) : on_(on) {
    if (on_) at::autocast::set_enabled(true);
  }
  ~AutocastScope() {
    if (!on_) return;
    at::autocast::set_enabled(false);
    at::autocast::clear_cache();
  }

 private:
  bool on_;
};

}  // namespace

double Trainer::train_step(const Batch& batch, torch::optim::Optimizer& optimizer, double share) {
  torch::Tensor loss;
  {
    AutocastScope autocast(s_.recipe.train.autocast && s_.clip->logit_scale().is_cuda());
    loss = s_.method->loss(batch).to(torch::kFloat);
  }
  if (!std::isfinite(loss.item<double>()))
    throw Error("training diverged: the loss is " + std::to_string(loss.item<double>()) + " (lower train.lr?)");
  optimizer.zero_grad();
  auto& world = dist::world();
  if (world.size() > 1) {
    // Data parallel: this rank's loss is the mean over its slice; weighted by the slice's
    // share of the global batch and summed over the ranks, the gradients are those of the
    // global batch's mean, the same on every rank, so the parameters stay identical.
    loss = loss * share;
    loss.backward();
    std::vector<torch::Tensor> reduced;
    for (const auto& group : optimizer.param_groups())
      for (const auto& p : group.params())
        if (p.grad().defined()) reduced.push_back(p.grad());
    reduced.push_back(loss.detach().reshape({1}).clone());
    world.all_reduce_sum(reduced, "the gradients");
    loss = reduced.back().reshape({});
  } else {
    loss.backward();
  }
  s_.method->after_backward();
  // Checked before the step: a non-finite gradient would poison the parameters and the
  // optimizer's moments, and every checkpoint after them.
  for (const auto& group : optimizer.param_groups())
    for (const auto& p : group.params())
      if (p.grad().defined() && !torch::isfinite(p.grad()).all().item<bool>())
        throw Error("training diverged: a gradient is not finite (lower train.lr, or set train.grad_clip?)");
  if (s_.recipe.train.grad_clip > 0)
    torch::nn::utils::clip_grad_norm_(s_.method->trainable_parameters(), s_.recipe.train.grad_clip);
  optimizer.step();
  return loss.item<double>();
}

// A step's error names where it happened; the run stops there, and the last epoch's
// checkpoint (written before this epoch began) is what --resume continues from.
// Fault injection for the resume tests: VLMADAPT_KILL_AT=<where>:<n> dies like a killed
// process (SIGKILL) at that point: "step:N" after the N-th step of the run (mid-epoch),
// "checkpoint:N" in the middle of epoch N's checkpoint (its state written, not committed),
// "epoch:N" after epoch N is committed; "round:N" after pseudolabel round N is committed.
void kill_point(const char* where, int64_t n) {
  static const std::string at = [] {
    const char* v = std::getenv("VLMADAPT_KILL_AT");
    return std::string(v ? v : "");
  }();
  // VLMADAPT_KILL_RANK=<r>: only that rank of a distributed run dies (the launcher tests).
  static const bool this_rank = [] {
    const char* only = std::getenv("VLMADAPT_KILL_RANK");
    const char* rank = std::getenv("RANK");
    return !only || std::string(only) == (rank ? rank : "0");
  }();
  if (!at.empty() && this_rank && at == std::string(where) + ":" + std::to_string(n)) std::raise(SIGKILL);
}

double Trainer::located_step(int64_t epoch, int64_t step, const std::function<double()>& run_step) {
  try {
    const double loss = run_step();
    kill_point("step", ++steps_done_);
    return loss;
  } catch (const Error& e) {
    throw Error("epoch " + std::to_string(epoch + 1) + ", step " + std::to_string(step + 1) + ": " + e.what() +
                (s_.checkpoint_dir.empty() ? std::string()
                                           : "; the last good checkpoint is kept in " + s_.checkpoint_dir +
                                                 " (train --resume continues from it)"));
  }
}

double Trainer::run_epoch(int64_t epoch, torch::optim::Optimizer& optimizer) {
  const auto device = s_.clip->logit_scale().device();
  auto& world = dist::world();
  LoaderOptions lo = loader_options(epoch);
  lo.shard = world.rank();
  lo.shards = world.size();
  BatchLoader loader(*s_.dataset, s_.dataset->train, lo);
  Progress progress("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(epochs_), loader.num_batches(), std::cerr);
  double total = 0;
  int64_t steps = 0;
  const int64_t items = loader.num_items();
  for (PixelBatch pb; loader.next(pb);) {
    const int64_t whole = std::min<int64_t>(lo.batch_size, items - steps * lo.batch_size);
    total += located_step(epoch, steps, [&] {
      require_slice(pb.labels.size(0), whole);
      Batch batch = method_batch(*s_.method, s_.clip, pb.pixels.to(device), pb.labels.to(device));
      if (has_pseudo_) mark_pseudo(batch, pb.indices, whole);
      return train_step(batch, optimizer, static_cast<double>(pb.labels.size(0)) / static_cast<double>(whole));
    });
    ++steps;  // not inside the call below: argument evaluation order is unspecified
    progress.update(steps, total / steps, learning_rate(s_.recipe.train, epoch, epochs_), pb.labels.size(0));
  }
  progress.finish();
  return steps ? total / steps : 0;
}

// Opt-in: every image has V cached augmented views; an epoch draws one per image.
double Trainer::run_cached_epoch(int64_t epoch, torch::optim::Optimizer& optimizer) {
  const auto device = s_.clip->logit_scale().device();
  const int64_t n = static_cast<int64_t>(s_.dataset->train.size()), views = cached_views_;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seeded::mix(s_.recipe.data.seed, epoch, 0xC0FFEE));
  seeded::shuffle(order, rng);
  const int64_t bs = s_.recipe.train.batch_size;
  const int64_t usable = n >= bs ? n - n % bs : n;  // drop_last as the online loop
  double total = 0;
  int64_t steps = 0;
  auto& world = dist::world();
  for (int64_t start = 0; start < usable; start += bs) {
    std::vector<int64_t> rows, images;
    const int64_t whole = std::min(start + bs, usable) - start;
    const int64_t lo = start + whole * world.rank() / world.size(), hi = start + whole * (world.rank() + 1) / world.size();
    for (int64_t i = start; i < start + whole; ++i) {
      const int64_t view = static_cast<int64_t>(seeded::below(rng, views));  // drawn on every rank: the same stream
      if (i < lo || i >= hi) continue;
      rows.push_back(view * n + order[i]);
      images.push_back(order[i]);
    }
    require_slice(hi - lo, whole);
    const double share = static_cast<double>(hi - lo) / static_cast<double>(whole);
    auto index = torch::tensor(rows, torch::kLong);
    Batch batch{{}, view_features_.features.index_select(0, index).to(device),
                view_features_.labels.index_select(0, index).to(device)};
    if (has_pseudo_) mark_pseudo(batch, images, whole);
    total += located_step(epoch, steps, [&] { return train_step(batch, optimizer, share); });
    ++steps;
  }
  return steps ? total / steps : 0;
}

double Trainer::train(bool resume) {
  if (!s_.method->contract().trains) return 0;
  auto params = s_.method->trainable_parameters();
  if (params.empty()) throw Error("method " + s_.recipe.method + " trains but has no trainable parameters");
  if (s_.method->contract().input == Input::Pixels && s_.recipe.train.feature_views > 0)
    throw Error("train.feature_views: this method runs the image tower itself; cached views do not apply");
  auto optimizer = make_optimizer(s_.recipe.train, params);
  int64_t start = resume ? load_checkpoint(*optimizer) : 0;
  if (s_.recipe.train.feature_views > 0 && !s_.recipe.train.augment)
    throw Error("train.feature_views: cached augmented views contradict train.augment = false");
  if (s_.recipe.train.feature_views > 0) {
    auto o = loader_options(0);
    o.batch_size = s_.recipe.eval.batch_size;
    view_features_ = augmented_view_features(s_.clip, *s_.dataset, s_.dataset->train, o, s_.recipe.train.feature_views, s_.cache);
    cached_views_ = s_.recipe.train.feature_views;
    if (on_views_cached) on_views_cached();
  } else if (!s_.recipe.train.augment && s_.method->contract().input == Input::Features) {
    // Without augmentation every epoch sees the same frozen features: computed (or read
    // from the cache) once, as the evaluator's.
    auto o = loader_options(0);
    o.augment = false;
    o.shuffle = false;
    o.drop_last = false;  // every item's features, not whole batches only
    o.batch_size = s_.recipe.eval.batch_size;
    const std::string tag = test_transform_tag(s_.recipe, s_.clip->image_resolution());
    view_features_ = s_.cache ? s_.cache->features(s_.clip, *s_.dataset, s_.dataset->train, o, tag)
                              : compute_features(s_.clip, *s_.dataset, s_.dataset->train, o);
    cached_views_ = 1;
  }
  double loss = resumed_loss_;  // a finished run resumed again keeps the loss it recorded
  s_.method->on_train_begin(epochs_);
  for (int64_t epoch = start; epoch < epochs_; ++epoch) {
    set_lr(*optimizer, learning_rate(s_.recipe.train, epoch, epochs_));
    loss = cached_views_ > 0 ? run_cached_epoch(epoch, *optimizer) : run_epoch(epoch, *optimizer);
    s_.method->on_epoch_end(epoch, epochs_);  // before the checkpoint, which then holds what it changed
    save_checkpoint(epoch, *optimizer, loss);
    if (on_epoch_end) on_epoch_end(epoch, loss);
    kill_point("epoch", epoch + 1);
  }
  s_.method->on_train_end();
  return loss;
}

void Trainer::save_checkpoint(int64_t epoch, torch::optim::Optimizer& optimizer, double loss) {
  if (s_.checkpoint_dir.empty() || !dist::world().main()) return;  // the global state: rank 0 writes it
  const fs::path root(s_.checkpoint_dir);
  const fs::path dir = root / ("epoch_" + std::to_string(epoch + 1));
  fs::create_directories(dir);
  write_safetensors((dir / "method.safetensors").string(), s_.method->state());
  write_safetensors((dir / "rng.safetensors").string(), {{"torch_cpu", rng_state()}});
  const auto opt_tmp = (dir / "optimizer.pt.tmp").string();
  torch::save(optimizer, opt_tmp);
  fs::rename(opt_tmp, dir / "optimizer.pt");
  kill_point("checkpoint", epoch + 1);
  // latest.json is the commit point: a crash before it leaves the previous epoch in force.
  write_file_atomic((root / "latest.json").string(),
                    nlohmann::json{{"epoch", epoch + 1}, {"loss", loss}, {"epochs", epochs_}}.dump());
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && entry.path() != dir) fs::remove_all(entry.path());
}

int64_t Trainer::load_checkpoint(torch::optim::Optimizer& optimizer) {
  const fs::path root(s_.checkpoint_dir);
  if (s_.checkpoint_dir.empty() || !fs::exists(root / "latest.json")) return 0;
  const auto latest = (root / "latest.json").string();
  int64_t done = 0;
  try {
    const auto index = nlohmann::json::parse(read_file(latest));
    done = index.at("epoch").get<int64_t>();
    resumed_loss_ = index.at("loss").get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(latest + ": corrupt checkpoint index: " + e.what());
  }
  const fs::path dir = root / ("epoch_" + std::to_string(done));
  s_.method->load_state(read_safetensors((dir / "method.safetensors").string()), (dir / "method.safetensors").string());
  try {
    torch::load(optimizer, (dir / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    throw Error((dir / "optimizer.pt").string() + ": cannot read optimizer state: " + e.what_without_backtrace());
  }
  set_rng_state(read_safetensors((dir / "rng.safetensors").string()).at("torch_cpu"));
  std::cerr << "resuming after epoch " << done << " from " << dir.string() << "\n";
  return done;
}

}  // namespace vlmadapt
