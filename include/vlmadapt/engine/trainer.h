// The one few-shot training loop, shared by every method: optimizer, warmup and
// cosine schedule, augmentation in worker threads, frozen image features without
// gradients, a checkpoint after every epoch, and exact resume.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/features.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/engine/recipe.h>

namespace vlmadapt {

// Learning rate of epoch `epoch` (0-based) of `epochs`: warmup epochs at warmup_lr (constant)
// or ramping to lr (linear), then cosine from lr (CoOp: lr * (1 + cos(pi (e - w) / E)) / 2).
double learning_rate(const TrainOptions& options, int64_t epoch, int64_t epochs);

// The optimizer of train.optimizer (sgd, adam, adamw) over `params`.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& options, std::vector<torch::Tensor> params);

// Fault injection for the resume tests (VLMADAPT_KILL_AT=<where>:<n>): dies as a killed
// process (SIGKILL) when `where`:`n` is the point named (with VLMADAPT_KILL_RANK=<r>:
// only on that rank of a distributed run).
void kill_point(const char* where, int64_t n);

struct TrainerSetup {
  Method* method = nullptr;
  Clip clip{nullptr};
  const Dataset* dataset = nullptr;  // the few-shot split: its train items are trained on (null: train_step only)
  Recipe recipe;
  std::string checkpoint_dir;        // "<run>/checkpoint"; "" = no checkpoints
  FeatureCache* cache = nullptr;     // for the opt-in cached augmented views
};

class Trainer {
 public:
  explicit Trainer(TrainerSetup setup);
  // Trains to the last epoch, continuing from the latest checkpoint when `resume`.
  // Returns the mean loss of the last epoch.
  double train(bool resume);
  int64_t epochs() const { return epochs_; }
  // One optimisation step on a batch (the method's loss, backward, clipping, update);
  // returns the loss. Throws vlmadapt::Error when the loss is not finite. With several
  // ranks (engine/distributed.h) `batch` is this rank's slice, `share` its fraction of the
  // global batch: the gradients are weighted by it and summed over the ranks, and the
  // loss returned is the global batch's.
  double train_step(const Batch& batch, torch::optim::Optimizer& optimizer, double share = 1.0);
  // Called after each epoch's checkpoint (epoch is 0-based).
  std::function<void(int64_t epoch, double mean_loss)> on_epoch_end;
  // Called once the cached views of train.feature_views are ready, before the first epoch.
  std::function<void()> on_views_cached;

 private:
  double run_epoch(int64_t epoch, torch::optim::Optimizer& optimizer);
  double run_cached_epoch(int64_t epoch, torch::optim::Optimizer& optimizer);
  double located_step(int64_t epoch, int64_t step, const std::function<double()>& run_step);
  int64_t steps_done_ = 0;
  double resumed_loss_ = 0;  // the loss of the epoch a resume starts after  // steps taken by this process (fault injection counts them)
  void save_checkpoint(int64_t epoch, torch::optim::Optimizer& optimizer, double loss);
  int64_t load_checkpoint(torch::optim::Optimizer& optimizer);
  LoaderOptions loader_options(int64_t epoch) const;
  // Batch::pseudo of the train items at `positions`.
  torch::Tensor pseudo_flags(const std::vector<int64_t>& positions) const;
  // The batch's pseudolabel flags, and the global batch's counts (`whole` items).
  void mark_pseudo(Batch& batch, const std::vector<int64_t>& positions, int64_t whole) const;

  TrainerSetup s_;
  int64_t epochs_;
  FeatureSet view_features_;  // [N*V,E] cached views of the train items (V = cached_views_)
  int64_t cached_views_ = 0;  // train.feature_views, or 1 (the test view) without augmentation, or 0
  bool has_pseudo_ = false;   // some train items carry pseudolabels
};

}  // namespace vlmadapt
