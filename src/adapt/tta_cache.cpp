#include <vlmadapt/adapt/tta_cache.h>

#include <cmath>
#include <limits>

#include <vlmadapt/adapt/tta.h>

namespace vlmadapt::tta {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Writes one entry into slot `slot` of class `cls`.
void write_slot(ClassCache& cache, int64_t cls, int64_t slot, const torch::Tensor& key, double entropy,
                const torch::Tensor& prob) {
  cache.keys[cls][slot].copy_(key.detach().reshape({-1}));
  cache.entropies[cls][slot].fill_(entropy);
  if (cache.probs.defined()) cache.probs[cls][slot].copy_(prob.detach().reshape({-1}));
}

// Reorders the slots of class `cls` by `order` [K].
void reorder_slots(ClassCache& cache, int64_t cls, const torch::Tensor& order) {
  auto keys = cache.keys[cls];
  keys.copy_(keys.index_select(0, order));
  auto h = cache.entropies[cls];
  h.copy_(h.index_select(0, order));
  if (cache.probs.defined()) {
    auto p = cache.probs[cls];
    p.copy_(p.index_select(0, order));
  }
}

}  // namespace

ClassCache empty_cache(int64_t classes, int64_t capacity, int64_t dim, bool with_probs, const torch::Device& device) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device);
  ClassCache c;
  c.keys = torch::zeros({classes, capacity, dim}, opts);
  c.entropies = torch::full({classes, capacity}, kInf, opts);
  if (with_probs) c.probs = torch::zeros({classes, capacity, classes}, opts);
  return c;
}

void reset_cache(ClassCache& cache, int64_t classes, int64_t capacity, int64_t dim, const torch::Device& device) {
  auto fresh = empty_cache(classes, capacity, dim, cache.probs.defined(), device);
  torch::NoGradGuard no_grad;
  cache.keys.set_data(fresh.keys);
  cache.entropies.set_data(fresh.entropies);
  if (cache.probs.defined()) cache.probs.set_data(fresh.probs);
}

ClassCache widened_copy(const ClassCache& cache, int64_t extra) {
  auto wide = empty_cache(cache.classes(), cache.capacity() + extra, cache.keys.size(2), cache.probs.defined(),
                          cache.keys.device());
  torch::NoGradGuard no_grad;
  wide.keys.narrow(1, 0, cache.capacity()).copy_(cache.keys);
  wide.entropies.narrow(1, 0, cache.capacity()).copy_(cache.entropies);
  if (cache.probs.defined()) wide.probs.narrow(1, 0, cache.capacity()).copy_(cache.probs);
  return wide;
}

bool insert_lowest_entropy(ClassCache& cache, int64_t cls, const torch::Tensor& key, double entropy,
                           const torch::Tensor& prob) {
  torch::NoGradGuard no_grad;
  const int64_t last = cache.capacity() - 1;
  if (last < 0) return false;
  // Compared as stored (float), as the official code compares its cached tensors.
  const float h = static_cast<float>(entropy);
  if (!(h < cache.entropies[cls][last].item<float>())) return false;  // an empty slot holds +inf
  write_slot(cache, cls, last, key, h, prob);
  reorder_slots(cache, cls, std::get<1>(torch::sort(cache.entropies[cls], /*stable=*/true, 0, false)));
  return true;
}

void insert_fifo(ClassCache& cache, int64_t cls, const torch::Tensor& key, double entropy, const torch::Tensor& prob) {
  torch::NoGradGuard no_grad;
  const int64_t k = cache.capacity();
  if (k == 0) return;
  int64_t slot = torch::isfinite(cache.entropies[cls]).sum().item<int64_t>();
  if (slot >= k) {  // full: the oldest (slot 0) leaves, the others move up one
    reorder_slots(cache, cls, torch::roll(torch::arange(k, torch::TensorOptions().device(cache.keys.device())), -1));
    slot = k - 1;
  }
  write_slot(cache, cls, slot, key, entropy, prob);
}

torch::Tensor kernel_weights(const torch::Tensor& query, const ClassCache& cache, double beta) {
  auto affinity = torch::matmul(cache.keys, query);  // [C,K]
  return torch::exp(-beta * (1 - affinity)) * cache.filled().to(affinity.scalar_type());
}

torch::Tensor positive_cache_logits(const torch::Tensor& query, const ClassCache& cache, double alpha, double beta) {
  return alpha * kernel_weights(query, cache, beta).sum(1);
}

torch::Tensor negative_mask(const torch::Tensor& probs, double low, double high) {
  return ((probs > low) & (probs < high)).to(probs.scalar_type());
}

torch::Tensor negative_cache_logits(const torch::Tensor& query, const ClassCache& cache, double alpha, double beta,
                                    double mask_low, double mask_high) {
  auto w = kernel_weights(query, cache, beta);  // [C,K]
  return alpha * (w.unsqueeze(-1) * negative_mask(cache.probs, mask_low, mask_high)).sum(std::vector<int64_t>{0, 1});
}

double tda_normalised_entropy(double entropy_nats, int64_t classes) {
  return entropy_nats / std::log2(static_cast<double>(classes));
}

bool in_entropy_band(double normalised_entropy, double low, double high) {
  return low < normalised_entropy && normalised_entropy < high;
}

ViewSummary summarize_views(const torch::Tensor& features, const torch::Tensor& logits, double selection) {
  ViewSummary s;
  if (features.size(0) == 1) {
    s.feature = features[0];
    s.logits = logits[0];
    s.probs = torch::softmax(s.logits, -1);
    s.entropy = entropy(logits.narrow(0, 0, 1))[0].item<double>();
  } else {
    auto kept = confident_views(logits, selection);
    auto z = logits.index_select(0, kept);
    s.feature = features.index_select(0, kept).mean(0);  // not renormalised (TDA's quirk)
    s.logits = z.mean(0);
    s.probs = torch::softmax(z, -1).mean(0);
    s.entropy = marginal_entropy(z.detach()).item<double>();
  }
  s.label = s.logits.argmax().item<int64_t>();
  return s;
}

torch::Tensor boosting_views(const torch::Tensor& logits, double selection) {
  const int64_t keep = static_cast<int64_t>(logits.size(0) * selection);
  auto order = std::get<1>(torch::sort(entropy(logits.detach()), /*stable=*/true, 0, false));
  return order.narrow(0, 0, keep);
}

PseudoLabel dmn_pseudo_label(const torch::Tensor& logits, double selection) {
  torch::NoGradGuard no_grad;
  auto p = torch::softmax(logits, -1);
  auto view_entropy = -(p * torch::log(p + 1e-6)).sum(-1);
  const int64_t keep = std::max<int64_t>(1, static_cast<int64_t>(logits.size(0) * selection));
  auto kept = std::get<1>(torch::sort(view_entropy, /*stable=*/true, 0, false)).narrow(0, 0, keep);
  auto mean = p.index_select(0, kept).mean(0);
  return {mean.argmax().item<int64_t>(), -(mean * torch::log(mean + 1e-8)).sum().item<double>()};
}

int64_t memory_write(torch::Tensor& keys, torch::Tensor& entropies, torch::Tensor& counts, int64_t cls,
                     const torch::Tensor& key, double entropy) {
  torch::NoGradGuard no_grad;
  const int64_t n = counts[cls].item<int64_t>();
  int64_t slot = -1;
  if (n < keys.size(1)) {
    slot = n;
    counts[cls].fill_(n + 1);
  } else {
    auto [largest, at] = entropies[cls].max(0);
    if (static_cast<float>(entropy) < largest.item<float>()) slot = at.item<int64_t>();
  }
  if (slot >= 0) {
    keys[cls][slot].copy_(key.detach().reshape({-1}));
    entropies[cls][slot].fill_(entropy);
  }
  return slot;
}

torch::Tensor memory_filled(const torch::Tensor& counts, int64_t slots) {
  return torch::arange(slots, counts.options()).unsqueeze(0) < counts.unsqueeze(1);
}

torch::Tensor kernel_value_sum(const torch::Tensor& query, const torch::Tensor& keys, const torch::Tensor& filled,
                               double beta) {
  auto w = torch::exp(-beta * (1 - torch::matmul(keys, query))) * filled.to(keys.scalar_type());  // [C,M]
  return (w.unsqueeze(-1) * keys).sum(1);
}

torch::Tensor readout_logits(const torch::Tensor& query, const torch::Tensor& value_sum, double scale) {
  return scale * torch::matmul(value_sum / value_sum.norm(2, -1, true), query);
}

torch::Tensor memory_readout(const torch::Tensor& query, const torch::Tensor& keys, const torch::Tensor& filled,
                             double beta, double scale) {
  return readout_logits(query, kernel_value_sum(query, keys, filled, beta), scale);
}

torch::Tensor adamw_first_step(const torch::Tensor& param, const torch::Tensor& grad, double lr, double eps,
                               double weight_decay) {
  return param * (1 - lr * weight_decay) - lr * grad / (grad.abs() + eps);
}

void evolve_prototypes(torch::Tensor& global, torch::Tensor& count, const torch::Tensor& accepted) {
  torch::NoGradGuard no_grad;
  const double n = static_cast<double>(count.item<int64_t>() + 1);
  count.fill_(static_cast<int64_t>(n));
  global.mul_(n / (n + 1)).add_(accepted.detach() / (n + 1));
}

std::pair<torch::Tensor, torch::Tensor> cache_class_means(const ClassCache& cache) {
  auto filled = cache.filled();
  auto per_class = filled.sum(1);                      // [C]
  auto present = torch::nonzero(per_class > 0).squeeze(1);  // ascending
  auto sums = (cache.keys * filled.unsqueeze(-1).to(cache.keys.scalar_type())).sum(1);
  auto means = sums.index_select(0, present) / per_class.index_select(0, present).unsqueeze(1).to(sums.scalar_type());
  return {present, means};
}

torch::Tensor paired_info_nce(const torch::Tensor& queries, const torch::Tensor& positives, double temperature) {
  auto q = queries / queries.norm(2, -1, true);
  auto p = positives / positives.norm(2, -1, true);
  auto logits = torch::matmul(q, p.t()) / temperature;
  return torch::nn::functional::cross_entropy(logits, torch::arange(q.size(0), logits.options().dtype(torch::kLong)));
}

}  // namespace vlmadapt::tta
