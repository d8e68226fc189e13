// tip_adapter: Tip-Adapter (Zhang et al., ECCV 2022; METHODS.md §11.1), training-free.
// A cache of the few-shot set: keys = the normalised mean of each image's features over
// `augment_epochs` augmented views (RandomResizedCrop scale from train.scale_min, 0.5 in
// the recipe, and flips), values = one-hot labels. For a test feature f (normalised):
//   logits = 100 f W^T + alpha exp(-beta (1 - f keys^T)) values
// with W the hand-written text classifier.
//
// Selection (train.selection): with `val`, alpha and beta are searched on the validation
// split exactly as the official search_hp (beta outer over 200 values, alpha inner over 20,
// the first strict maximum); with `none`, the initial alpha and beta are kept. The official
// code searches ImageNet's on its test set; here nothing ever sees test labels.
// Follows the official code, except: features and the cache are fp32 (the official cache
// values are fp16), and on classes without support images (the new half of base-to-new)
// the cache holds nothing, so the method is zero-shot there.
#pragma once
#include <vlmadapt/adapt/fewshot.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::methods {

enum class Search { Auto, On, Off };
inline const std::vector<std::pair<Search, std::string>>& enum_names(Search) {
  static const std::vector<std::pair<Search, std::string>> n{{Search::Auto, "auto"}, {Search::On, "on"}, {Search::Off, "off"}};
  return n;
}

struct TipAdapterOptions {
  double alpha = 1.0;  // the paper's init: 1.17 ImageNet/Food/Pets/SUN, 3 Caltech/Cars/UCF, 2 DTD/EuroSAT, 5 FGVC, 10 Flowers
  double beta = 1.0;
  int augment_epochs = 10;
  Search search = Search::Auto;
  double search_scale_beta = 7, search_scale_alpha = 3;  // ImageNet's, Pets', UCF's (configs/*.yaml)
  int search_steps_beta = 200, search_steps_alpha = 20;
  std::vector<std::string> templates;
  void bind(OptionSet& s) {
    s.add("alpha", alpha, "weight of the cache logits (the search's start; kept with search off)").at_least(0)
        .add("beta", beta, "sharpness of the cache kernel exp(-beta (1 - cos))").at_least(0)
        .add("augment_epochs", augment_epochs, "augmented views of each support image averaged into its key (0 = the test view)")
        .at_least(0)
        .add("search", search,
             "alpha/beta search on the validation split: auto = when train.selection = val; on = always (an error "
             "with selection = none); off = keep alpha and beta")
        .add("search_scale_beta", search_scale_beta, "beta grid: 0.1 + i (scale - 0.1) / steps").above(0.1)
        .add("search_scale_alpha", search_scale_alpha, "alpha grid: 0.1 + j (scale - 0.1) / steps").above(0.1)
        .add("search_steps_beta", search_steps_beta, "beta grid size").at_least(1)
        .add("search_steps_alpha", search_steps_alpha, "alpha grid size").at_least(1)
        .add("templates", templates, fewshot::TextClassifier::kHelp);
  }
};

class TipAdapter : public fewshot::TextAdapter {
 public:
  explicit TipAdapter(const TipAdapterOptions& options)
      : TextAdapter(options.templates, options.augment_epochs), options_(options) {
    keys_ = register_data_buffer("keys", torch::zeros({0}));
    values_ = register_data_buffer("values", torch::zeros({0}, torch::kLong));
    alpha_ = register_buffer("alpha", torch::full({}, options.alpha, torch::kDouble));
    beta_ = register_buffer("beta", torch::full({}, options.beta, torch::kDouble));
  }

  using Method::fit;
  void fit(const FitData& data) override {
    fit_cache(data);
    if (searches(data.selection)) search(keys_);
  }

  torch::Tensor logits(const Batch& batch) override {
    auto f = fewshot::normalized(batch.image_features);
    auto text = zero_shot(f);
    if (keys_.numel() == 0 || !fitted_for_task()) return text;  // no cache for these classes
    auto affinity = f.mm(cache_keys().t());
    return text + alpha_.item<double>() * fewshot::tip_cache_logits(affinity, values_, text.size(1), beta_.item<double>());
  }

  std::map<std::string, double> chosen() const override {
    return {{"alpha", alpha_.item<double>()}, {"beta", beta_.item<double>()}};
  }

 protected:
  virtual std::string name() const { return "tip_adapter"; }
  // The keys the affinity is taken with (Tip-Adapter-F learns them).
  virtual torch::Tensor cache_keys() const { return keys_; }

  // The cache (keys, values) and the text classifier; alpha and beta at their initial values.
  void fit_cache(const FitData& data) {
    torch::NoGradGuard no_grad;
    if (data.images() == 0) throw Error(name() + ": the support set is empty");
    fit_text(data);
    const auto device = clip_->logit_scale().device();
    keys_.set_data(fewshot::normalized(data.view_mean()).to(device));
    values_.set_data(data.image_labels().to(device));
    alpha_.fill_(options_.alpha);
    beta_.fill_(options_.beta);
    val_ = data.val;
  }

  bool searches(Selection selection) const {
    if (options_.search == Search::On && selection == Selection::None)
      throw Error(name() + ".search = on, but train.selection = none: nothing may be searched (set search = off, or selection = val)");
    return options_.search == Search::On || (options_.search == Search::Auto && selection == Selection::Val);
  }

  // alpha and beta on the validation split only.
  void search(const torch::Tensor& keys) {
    torch::NoGradGuard no_grad;
    if (!val_.features.defined() || val_.features.size(0) == 0)
      throw Error(name() + ": alpha and beta are searched on the validation split, which is empty (set search = off)");
    auto f = fewshot::normalized(val_.features).to(keys.device());
    auto choice = fewshot::tip_search(zero_shot(f), f.mm(keys.t()), values_, val_.labels,
                                      fewshot::tip_grid(0.1, options_.search_scale_alpha, options_.search_steps_alpha),
                                      fewshot::tip_grid(0.1, options_.search_scale_beta, options_.search_steps_beta));
    alpha_.fill_(choice.alpha);
    beta_.fill_(choice.beta);
  }

  TipAdapterOptions options_;
  torch::Tensor keys_, values_;  // [N,E], [N] -- fitted
  torch::Tensor alpha_, beta_;
  FeatureSet val_;               // kept from fit() for the searches
};

VLMADAPT_REGISTER_METHOD(TipAdapter, TipAdapterOptions, "tip_adapter",
                         "Tip-Adapter: a training-free cache of few-shot features; alpha, beta searched on validation")

}  // namespace vlmadapt::methods
