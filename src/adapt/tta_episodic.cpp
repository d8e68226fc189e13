#include <vlmadapt/adapt/tta_episodic.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <vlmadapt/adapt/tta.h>

namespace vlmadapt::tta {

namespace {

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

bool contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// The classes that share the top count, in class order.
std::vector<int64_t> top_classes(const torch::Tensor& votes) {
  return to_vector(torch::nonzero(votes == votes.max()).reshape(-1));
}

// The view that decides a tie: the first of `candidates` (view indices, in scan order)
// whose argmax is tied; else the fallback on the first candidate's logits.
int64_t break_tie(const torch::Tensor& logits, const std::vector<int64_t>& candidates,
                  const std::vector<int64_t>& tied, ZeroTieBreak mode) {
  const auto argmaxes = logits.argmax(-1);
  for (int64_t v : candidates) {
    const int64_t a = argmaxes[v].item<int64_t>();
    if (contains(tied, a)) return a;
  }
  // No discarded view at all (keep_fraction 1): view 0, the test view, decides.
  const auto row = logits[candidates.empty() ? 0 : candidates.front()];
  return mode == ZeroTieBreak::Official ? official_fallback_argmax(row, tied) : restricted_argmax(row, tied);
}

}  // namespace

int64_t restricted_argmax(const torch::Tensor& row, const std::vector<int64_t>& classes) {
  auto masked = torch::full_like(row, -std::numeric_limits<float>::infinity());
  auto idx = torch::tensor(classes, torch::kLong).to(row.device());
  masked.index_copy_(0, idx, row.index_select(0, idx));
  return masked.argmax().item<int64_t>();
}

int64_t official_fallback_argmax(const torch::Tensor& row, const std::vector<int64_t>& classes) {
  auto masked = row.clone();
  const int64_t c = row.size(0);
  for (int64_t t : classes) masked[c - 1 - t] = -std::numeric_limits<float>::infinity();  // logit[~t]
  return masked.argmax().item<int64_t>();
}

ZeroVote zero_vote(const torch::Tensor& logits, double keep_fraction, ZeroTieBreak tie_break) {
  torch::NoGradGuard no_grad;
  const auto z = logits.detach();
  const int64_t views = z.size(0);
  const int64_t keep = std::max<int64_t>(1, static_cast<int64_t>(views * keep_fraction));
  const auto order = std::get<1>(torch::sort(entropy(z), /*stable=*/true, 0, false));  // most confident first
  const auto kept = order.narrow(0, 0, keep);
  ZeroVote out;
  // The zero-temperature marginal of the kept views is the count of their argmaxes.
  out.votes = torch::bincount(z.index_select(0, kept).argmax(-1), {}, z.size(1)).to(torch::kFloat);
  const auto tied = top_classes(out.votes);
  if (tied.size() == 1) {
    out.prediction = tied.front();
    return out;
  }
  std::vector<int64_t> candidates;
  if (tie_break == ZeroTieBreak::Intended) {
    candidates = to_vector(order.narrow(0, keep, views - keep));
  } else {
    for (int64_t v = keep; v < views; ++v) candidates.push_back(v);  // the official l[k:]
  }
  out.prediction = break_tie(z, candidates, tied, tie_break);
  out.votes[out.prediction] += 1;
  return out;
}

torch::Tensor vote_share_logits(const torch::Tensor& votes, double floor) {
  auto share = votes.to(torch::kFloat) / votes.sum();
  return torch::log(torch::clamp_min(share, floor)).unsqueeze(0);
}

torch::Tensor meanshift_bandwidth(const torch::Tensor& points, double knn_fraction) {
  const int64_t n = points.size(0);
  if (n < 2) return torch::ones({n}, points.options());
  const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(knn_fraction * static_cast<double>(n - 1)));
  const auto dist = torch::cdist(points.unsqueeze(0), points.unsqueeze(0)).squeeze(0);
  // Sorted row by row, the first entry is the point itself (distance 0), as the official code.
  const auto nearest = std::get<0>(torch::sort(dist, 1)).narrow(1, 1, k);
  return torch::sqrt(0.5 * nearest.pow(2).mean(1));
}

torch::Tensor meanshift_density(const torch::Tensor& points, const torch::Tensor& mode, const torch::Tensor& sigma) {
  const auto d2 = (points - mode.unsqueeze(0)).pow(2).sum(1);
  // Duplicated views give sigma = 0; a tiny floor keeps 0/0 out of the exponent.
  return torch::exp(-d2 / (2 * torch::clamp_min(sigma.pow(2), 1e-12)));
}

torch::Tensor meanshift_inlierness(const torch::Tensor& density, const torch::Tensor& affinity, torch::Tensor y,
                                   const MeanShiftOptions& o, int iterations) {
  for (int i = 0; i < iterations; ++i) {
    auto next = torch::softmax((density + o.lambda_q * affinity.matmul(y)) / o.lambda_y, 0);
    const bool converged = (next - y).norm().item<double>() < o.tolerance;
    y = next;
    if (converged) break;
  }
  return y;
}

torch::Tensor meanshift_mode_step(const torch::Tensor& points, const torch::Tensor& sigma, const torch::Tensor& y,
                                  const torch::Tensor& mode) {
  const auto w = meanshift_density(points, mode, sigma) * y;
  const auto total = w.sum();
  if (!(total.item<double>() > 0)) return mode;
  auto mean = (w.unsqueeze(1) * points).sum(0) / total;
  return mean / mean.norm();
}

MeanShiftResult meanshift_mode(const torch::Tensor& points, const torch::Tensor& probs, const MeanShiftOptions& o) {
  torch::NoGradGuard no_grad;
  const int64_t n = points.size(0);
  MeanShiftResult r;
  r.bandwidth = meanshift_bandwidth(points, o.knn_fraction);
  const auto affinity = probs.matmul(probs.t());
  r.inlierness = torch::full({n}, 1.0 / static_cast<double>(n), points.options());
  r.mode = points[0].clone();
  for (int outer = 0; outer < o.outer_iterations; ++outer) {
    const auto density = meanshift_density(points, r.mode, r.bandwidth);  // once per outer iteration
    r.inlierness = meanshift_inlierness(density, affinity, r.inlierness, o, o.inlierness_iterations);
    for (int i = 0; i < o.mode_iterations; ++i) {
      auto next = meanshift_mode_step(points, r.bandwidth, r.inlierness, r.mode);
      const bool converged = (next - r.mode).norm().item<double>() < o.tolerance;
      r.mode = next;
      if (converged) break;
    }
  }
  return r;
}

torch::Tensor text_dispersion(const torch::Tensor& text) {
  const auto centroid = text.mean(0, /*keepdim=*/true);
  return (text - centroid).norm(2, 1).mean();
}

}  // namespace vlmadapt::tta
