// tip_adapter_f: Tip-Adapter-F (Zhang et al., ECCV 2022; METHODS.md §11.2). Tip-Adapter
// whose cache keys are learned: the affinity is f keys^T with keys a parameter initialised
// to the cache, trained by the shared loop on cross-entropy of the Tip-Adapter logits at
// the initial alpha and beta (recipe: AdamW lr 1e-3, eps 1e-4, batch 256, 20 epochs, cosine,
// crops of scale 0.5-1 drawn afresh each epoch). The values and the text classifier stay
// fixed.
//
// Selection (train.selection): with `val`, the kept epoch is the first with the best
// validation accuracy, and alpha and beta are then searched on validation with the learned
// keys, as the official code does after training; with `none`, the last epoch and the
// initial alpha and beta. The official code picks the epoch on the test set (flagged in
// the spec); here nothing ever sees test labels.
#pragma once
#include "methods/tip_adapter.h"

namespace vlmadapt::methods {

struct TipAdapterFOptions : TipAdapterOptions {};

class TipAdapterF : public TipAdapter {
 public:
  explicit TipAdapterF(const TipAdapterFOptions& options) : TipAdapter(options) {
    adapter_ = register_data_parameter("adapter", torch::zeros({0}));
    best_adapter_ = register_data_buffer("best_adapter", torch::zeros({0}));
    best_accuracy_ = register_buffer("best_accuracy", torch::full({}, -1.0, torch::kDouble));
    best_epoch_ = register_buffer("best_epoch", torch::zeros({}, torch::kLong));
  }

  Contract contract() const override {
    Contract c = TipAdapter::contract();
    c.trains = true;
    return c;
  }

  using TipAdapter::fit;
  void fit(const FitData& data) override {
    fit_cache(data);  // keys and values; alpha and beta at their initial values for training
    selection_ = data.selection;
    torch::NoGradGuard no_grad;
    adapter_.set_data(keys_.clone());
    best_adapter_.set_data(keys_.clone());
    best_accuracy_.fill_(-1.0);
    best_epoch_.zero_();
  }

  // Validation accuracy at the initial alpha and beta; the best epoch's keys are kept.
  void on_epoch_end(int64_t epoch, int64_t /*epochs*/) override {
    if (!val_.features.defined() || val_.features.size(0) == 0) return;
    torch::NoGradGuard no_grad;
    const double acc = fewshot::accuracy(logits({{}, val_.features.to(adapter_.device()), {}}), val_.labels);
    if (acc > best_accuracy_.item<double>()) {
      best_accuracy_.fill_(acc);
      best_epoch_.fill_(epoch + 1);
      best_adapter_.copy_(adapter_);
    }
  }

  void on_train_end() override {
    torch::NoGradGuard no_grad;
    if (best_epoch_.item<int64_t>() > 0) adapter_.copy_(best_adapter_);
    if (searches(selection_)) search(adapter_);
  }

  std::map<std::string, double> chosen() const override {
    auto c = TipAdapter::chosen();
    c["epoch"] = static_cast<double>(best_epoch_.item<int64_t>());  // 0 = the last (no validation)
    return c;
  }

 protected:
  std::string name() const override { return "tip_adapter_f"; }
  torch::Tensor cache_keys() const override { return adapter_; }

 private:
  torch::Tensor adapter_, best_adapter_, best_accuracy_, best_epoch_;
  Selection selection_ = Selection::Val;
};

VLMADAPT_REGISTER_METHOD(TipAdapterF, TipAdapterFOptions, "tip_adapter_f",
                         "Tip-Adapter-F: Tip-Adapter with its cache keys fine-tuned; epoch, alpha, beta chosen on validation")

}  // namespace vlmadapt::methods
