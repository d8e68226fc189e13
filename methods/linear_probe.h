// linear_probe: logistic regression on frozen, L2-normalised CLIP image features
// (CLIP paper, sec. 3.2; CoOp's linear-probe baseline). The inverse regularisation
// strength C is searched on the validation split only: a log grid, then a finer grid
// around the best value. The objective is sklearn's: C * sum(CE) + ||W||^2 / 2,
// minimised with L-BFGS. Training-free for the shared loop (fit() does the work).
#pragma once
#include <cmath>

#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>

namespace vlmadapt::methods {

struct LinearProbeOptions {
  double c = 0;           // fixed C; 0 = search on the validation split
  double c_min_log10 = -3, c_max_log10 = 3;
  int max_iter = 300;
  void bind(OptionSet& s) {
    s.add("c", c, "inverse regularisation strength; 0 = search it on the validation split (an error with train.selection = none)").at_least(0);
    s.add("c_min_log10", c_min_log10, "lower end of the search grid (log10 C)");
    s.add("c_max_log10", c_max_log10, "upper end of the search grid (log10 C)");
    s.add("max_iter", max_iter, "L-BFGS iterations per fit").at_least(1);
  }
};

class LinearProbe : public Method {
 public:
  explicit LinearProbe(const LinearProbeOptions& options) : options_(options) {
    // [C,E] and [C] once fitted: their shape is the task's.
    weight_ = register_data_buffer("weight", torch::zeros({0}));
    bias_ = register_data_buffer("bias", torch::zeros({0}));
    c_ = register_buffer("c", torch::zeros({}, torch::kDouble));
  }

  void setup(const TaskContext& task) override { num_classes_ = static_cast<int64_t>(task.classnames.size()); }

  Contract contract() const override { return {Input::Features, /*fits=*/true}; }
  using Method::fit;
  void fit(const FitData& data) override {
    const FeatureSet& train = data.support;
    if (train.features.size(0) == 0) throw Error("linear_probe: the train split is empty");
    double best_c = options_.c;
    if (best_c <= 0 && data.selection == Selection::None)
      throw Error("linear_probe: train.selection = none, but C is searched on the validation split (set linear_probe.c)");
    if (best_c <= 0) best_c = search(train, data.val);
    auto [w, b] = solve(normalized(train.features), train.labels, best_c);
    weight_.set_data(w);
    bias_.set_data(b);
    c_.fill_(best_c);
  }

  torch::Tensor logits(const Batch& batch) override {
    if (weight_.numel() == 0) throw Error("linear_probe: not fitted (no train features were given)");
    return torch::addmm(bias_, normalized(batch.image_features), weight_.t());
  }

  double chosen_c() const { return c_.item<double>(); }
  std::map<std::string, double> chosen() const override { return {{"c", chosen_c()}}; }

 private:
  static torch::Tensor normalized(const torch::Tensor& f) { return (f / f.norm(2, -1, true)).to(torch::kFloat); }

  std::pair<torch::Tensor, torch::Tensor> solve(const torch::Tensor& x, const torch::Tensor& y, double c) const {
    torch::manual_seed(0);  // L-BFGS from zeros is deterministic; keep the global stream untouched by order
    auto w = torch::zeros({num_classes_, x.size(1)}, x.options()).set_requires_grad(true);
    auto b = torch::zeros({num_classes_}, x.options()).set_requires_grad(true);
    torch::optim::LBFGS opt({w, b}, torch::optim::LBFGSOptions(1).max_iter(options_.max_iter).line_search_fn("strong_wolfe"));
    const double n = static_cast<double>(x.size(0));
    auto closure = [&] {
      opt.zero_grad();
      // sklearn's objective divided by C*n: mean CE + ||W||^2 / (2 C n).
      auto loss = torch::cross_entropy_loss(torch::addmm(b, x, w.t()), y) + w.pow(2).sum() / (2 * c * n);
      loss.backward();
      return loss;
    };
    opt.step(closure);
    return {w.detach(), b.detach()};
  }

  double accuracy(const FeatureSet& set, const torch::Tensor& w, const torch::Tensor& b) const {
    auto pred = torch::addmm(b, normalized(set.features), w.t()).argmax(-1);
    return pred.eq(set.labels).to(torch::kDouble).mean().item<double>();
  }

  double search(const FeatureSet& train, const FeatureSet& val) const {
    if (val.features.size(0) == 0) throw Error("linear_probe: C is searched on the validation split, which is empty (set linear_probe.c)");
    auto x = normalized(train.features);
    double best = -1, best_log = 0;
    auto try_c = [&](double log_c) {
      auto [w, b] = solve(x, train.labels, std::pow(10.0, log_c));
      const double acc = accuracy(val, w, b);
      if (acc > best) best = acc, best_log = log_c;  // ties keep the stronger regularisation
    };
    for (double l = options_.c_min_log10; l <= options_.c_max_log10 + 1e-9; l += 1) try_c(l);
    const double centre = best_log;
    for (double d : {-0.5, -0.25, 0.25, 0.5}) try_c(centre + d);
    return std::pow(10.0, best_log);
  }

  LinearProbeOptions options_;
  int64_t num_classes_ = 0;
  torch::Tensor weight_, bias_, c_;
};

VLMADAPT_REGISTER_METHOD(LinearProbe, LinearProbeOptions, "linear_probe",
                         "logistic regression on frozen image features, C searched on the validation split")

}  // namespace vlmadapt::methods
