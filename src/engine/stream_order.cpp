#include <vlmadapt/engine/stream_order.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include <vlmadapt/core/error.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace {

double standard_normal(std::mt19937_64& rng) {  // Box-Muller
  const double u1 = 1.0 - seeded::uniform(rng), u2 = seeded::uniform(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

// log of a Gamma(alpha, 1) draw: Marsaglia and Tsang for alpha >= 1; below 1 the boost
// Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha), kept in log space (it underflows for
// alpha ~ 1e-3).
double log_gamma_draw(double alpha, std::mt19937_64& rng) {
  if (alpha < 1) return log_gamma_draw(alpha + 1, rng) + std::log(1.0 - seeded::uniform(rng)) / alpha;
  const double d = alpha - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  for (;;) {
    double x, v;
    do {
      x = standard_normal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = 1.0 - seeded::uniform(rng);
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return std::log(d * v);
  }
}

std::vector<int64_t> iota(size_t n) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// Split positions grouped by label, classes in ascending order, items in split order.
std::map<int64_t, std::vector<int64_t>> by_label(const std::vector<int64_t>& labels) {
  std::map<int64_t, std::vector<int64_t>> groups;
  for (size_t i = 0; i < labels.size(); ++i) groups[labels[i]].push_back(static_cast<int64_t>(i));
  return groups;
}

std::vector<int64_t> class_runs(const std::vector<int64_t>& labels, std::mt19937_64& rng) {
  auto groups = by_label(labels);
  std::vector<std::vector<int64_t>> runs;
  for (auto& [label, items] : groups) runs.push_back(std::move(items));
  seeded::shuffle(runs, rng);
  std::vector<int64_t> order;
  for (auto& run : runs) {
    seeded::shuffle(run, rng);
    order.insert(order.end(), run.begin(), run.end());
  }
  return order;
}

std::vector<int64_t> dirichlet_slots(const std::vector<int64_t>& labels, double concentration, uint64_t seed) {
  auto groups = by_label(labels);
  const int64_t slots = std::min<int64_t>(static_cast<int64_t>(groups.size()), static_cast<int64_t>(labels.size()));
  std::vector<std::vector<int64_t>> slot(static_cast<size_t>(slots));
  for (const auto& [label, items] : groups) {
    const auto share = dirichlet_draw(slots, concentration, seeded::mix(seed, static_cast<uint64_t>(label), 1));
    const double n = static_cast<double>(items.size());
    double cumulative = 0;
    size_t begin = 0;
    for (int64_t s = 0; s < slots; ++s) {
      cumulative += share[static_cast<size_t>(s)];
      // The last boundary is the class's end: rounding must not drop an image.
      const size_t end = s + 1 == slots ? items.size() : std::min(items.size(), static_cast<size_t>(std::floor(cumulative * n)));
      for (size_t i = begin; i < std::max(begin, end); ++i) slot[static_cast<size_t>(s)].push_back(items[i]);
      begin = std::max(begin, end);
    }
  }
  std::mt19937_64 rng(seeded::mix(seed, 2));
  std::vector<int64_t> order;
  for (auto& s : slot) {
    seeded::shuffle(s, rng);
    order.insert(order.end(), s.begin(), s.end());
  }
  return order;
}

}  // namespace

std::vector<double> dirichlet_draw(int64_t n, double concentration, uint64_t seed) {
  if (!(concentration > 0) || !std::isfinite(concentration))
    throw Error("eval.dirichlet: the concentration must be a finite number > 0, got " + std::to_string(concentration));
  std::mt19937_64 rng(seed);
  std::vector<double> logs(static_cast<size_t>(n));
  for (auto& l : logs) l = log_gamma_draw(concentration, rng);
  const double top = *std::max_element(logs.begin(), logs.end());
  double sum = 0;
  for (auto& l : logs) sum += (l = std::exp(l - top));
  for (auto& l : logs) l /= sum;
  return logs;
}

std::vector<int64_t> stream_order(const std::vector<int64_t>& labels, StreamOrder order, double concentration,
                                  uint64_t seed) {
  std::mt19937_64 rng(seeded::mix(seed, 0x5eed));
  switch (order) {
    case StreamOrder::Shuffled: {
      auto v = iota(labels.size());
      seeded::shuffle(v, rng);
      return v;
    }
    case StreamOrder::ByClass: return class_runs(labels, rng);
    case StreamOrder::Dirichlet: return dirichlet_slots(labels, concentration, seed);
  }
  throw Error("eval.order: unknown stream order");
}

double tail_mean(std::vector<double> run_values, double share) {
  if (run_values.empty()) return 0;
  std::sort(run_values.begin(), run_values.end());
  const size_t k = std::max<size_t>(1, static_cast<size_t>(std::floor(share * static_cast<double>(run_values.size()))));
  return std::accumulate(run_values.begin(), run_values.begin() + static_cast<long>(k), 0.0) / static_cast<double>(k);
}

}  // namespace vlmadapt
