// The arithmetic of the episodic test-time methods that follow TPT (TTA_ONLINE.md §5-§7):
// ZERO's vote over confident views, MTA's MeanShift over view embeddings and C-TPT's
// text-feature dispersion. Small functions on tensors, so that each step can be checked
// by hand (tests/test_tta_episodic.cpp); methods/zero.h, mta.h and ctpt.h compose them.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vlmadapt {

// ZERO's tie-break when several classes share the top vote count.
//   Intended - scan the discarded views in entropy order (most confident first); the first
//              one whose argmax is tied decides. If none is, the argmax of the first
//              discarded view's logits restricted to the tied classes (spec §5.1).
//   Official - FarinaMatteo/zero utils/tools.py greedy_break as shipped: scan the views
//              with index >= k in index order (not entropy order, so kept views may be
//              among them); the fallback masks the classes C-1-t for each tied t (bitwise
//              NOT of an integer index) on view k's logits, so it may pick an untied class.
enum class ZeroTieBreak { Intended, Official };
inline const std::vector<std::pair<ZeroTieBreak, std::string>>& enum_names(ZeroTieBreak) {
  static const std::vector<std::pair<ZeroTieBreak, std::string>> n{{ZeroTieBreak::Intended, "intended"},
                                                                   {ZeroTieBreak::Official, "official"}};
  return n;
}

// MeanShift solver settings (MaxZanella/MTA mta.py constants).
struct MeanShiftOptions {
  double lambda_y = 0.2;         // temperature of the inlierness softmax
  double lambda_q = 4.0;         // weight of the affinity term in the inlierness step
  double knn_fraction = 0.3;     // k = int(fraction * (V - 1)) neighbours for each point's bandwidth
  int outer_iterations = 5;      // alternations of inlierness and mode steps (no convergence test)
  int inlierness_iterations = 5; // cap of the inner inlierness loop
  int mode_iterations = 5;       // cap of the inner mode loop
  double tolerance = 1e-6;       // inner loops stop when the L2 change is below this
};

namespace tta {

// ---- ZERO -----------------------------------------------------------------------

struct ZeroVote {
  torch::Tensor votes;     // [C] float: argmax counts of the kept views, +1 for a tie-break winner
  int64_t prediction = 0;  // argmax of votes (unique after the tie-break)
};

// logits [V,C] of all views (view 0 the test view) at the scale used to rank confidence
// (exp(logit_scale) * cos; argmaxes do not depend on the scale). Keeps the int(V * keep)
// views (at least 1) of lowest entropy, counts their argmaxes, breaks a tie. With no
// discarded view (keep_fraction 1, where the official code fails) view 0's logits decide.
ZeroVote zero_vote(const torch::Tensor& logits, double keep_fraction,
                   ZeroTieBreak tie_break = ZeroTieBreak::Intended);
// The argmax of one row [C] among `classes` only (first of equal values by class index).
int64_t restricted_argmax(const torch::Tensor& row, const std::vector<int64_t>& classes);
// The official fallback's argmax: row with the classes C-1-t set to -inf for every t in
// `classes`, then the argmax over all classes (utils/tools.py break_sample_tie).
int64_t official_fallback_argmax(const torch::Tensor& row, const std::vector<int64_t>& classes);
// Logits [1,C] whose softmax is the vote share v / sum(v), classes without a vote at
// `floor` (so that the evaluator's softmax-based ECE sees the share of the winner).
torch::Tensor vote_share_logits(const torch::Tensor& votes, double floor = 1e-8);

// ---- MTA ------------------------------------------------------------------------

// Per-point bandwidth sigma [V] of points [V,E]: sigma_i^2 = 1/2 * mean of the squared
// distances to its k = int(knn_fraction * (V - 1)) nearest other points (k >= 1 when V > 1;
// the official code gives NaN for V < 5, where its k is 0). One point: sigma = 1.
torch::Tensor meanshift_bandwidth(const torch::Tensor& points, double knn_fraction);
// Gaussian density of every point around `mode` [E]: exp(-||x_i - m||^2 / (2 sigma_i^2)).
torch::Tensor meanshift_density(const torch::Tensor& points, const torch::Tensor& mode, const torch::Tensor& sigma);
// The inlierness step from y [V]: up to `iterations` of
// y <- softmax((density + lambda_q * affinity @ y) / lambda_y), stopping once ||dy|| < tol.
torch::Tensor meanshift_inlierness(const torch::Tensor& density, const torch::Tensor& affinity, torch::Tensor y,
                                   const MeanShiftOptions& options, int iterations);
// One mode step: the density-and-inlierness-weighted mean of the points, renormalised.
// Where every weight underflows to 0 the mode stays (the official code would give NaN).
torch::Tensor meanshift_mode_step(const torch::Tensor& points, const torch::Tensor& sigma, const torch::Tensor& y,
                                  const torch::Tensor& mode);

struct MeanShiftResult {
  torch::Tensor mode;        // [E], unit norm
  torch::Tensor inlierness;  // [V], sums to 1
  torch::Tensor bandwidth;   // [V] per-point sigma
};
// MTA's solve: points [V,E] normalised (row 0 the test view, where the mode starts), probs
// [V,C] the views' softmax (their inner products are the affinity). Alternates the
// inlierness step and the mode step, outer_iterations times.
MeanShiftResult meanshift_mode(const torch::Tensor& points, const torch::Tensor& probs,
                               const MeanShiftOptions& options = {});

// ---- C-TPT ----------------------------------------------------------------------

// Average text feature dispersion (ATFD) of text features [C,E]: mean_c ||t_c - mean(t)||_2
// (centroid not renormalised). Differentiable.
torch::Tensor text_dispersion(const torch::Tensor& text);

}  // namespace tta
}  // namespace vlmadapt
