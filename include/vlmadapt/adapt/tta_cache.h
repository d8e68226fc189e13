// The memory arithmetic of the online test-time methods (TTA_ONLINE.md §1-§4): TDA's
// per-class caches, BoostAdapter's FIFO negative cache and boosted positive cache, DPE's
// cache and first AdamW step, DMN's dynamic memory. Small free functions on tensors, in
// one place, so that methods/tda.h, boostadapter.h, dpe.h and dmn.h share them and the
// tests can check them by hand (tests/test_tta_online.cpp).
//
// A memory has a fixed shape, set once per class set, so that it stays bounded however
// long the stream and a saved state of another class count is rejected on load:
//   keys [C,K,E], entropies [C,K] with +inf in an empty slot, and for a negative cache
//   the probability vector of each entry [C,K,C].
// The functions that write change the tensors in place (they are the method's registered
// buffers) and touch only the row of the class they write.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <utility>

namespace vlmadapt::tta {

// One per-class cache, as views of a method's registered buffers.
struct ClassCache {
  torch::Tensor keys;       // [C,K,E]
  torch::Tensor entropies;  // [C,K], ascending in a lowest-entropy cache; +inf = empty
  torch::Tensor probs;      // [C,K,C] for a negative cache; undefined otherwise

  int64_t classes() const { return keys.size(0); }
  int64_t capacity() const { return keys.size(1); }
  // Filled slots [C,K] (bool).
  torch::Tensor filled() const { return torch::isfinite(entropies); }
};

// An empty cache of C classes, `capacity` slots, keys of `dim` floats; with_probs adds
// the negative cache's probability vectors.
ClassCache empty_cache(int64_t classes, int64_t capacity, int64_t dim, bool with_probs, const torch::Device& device);
// Points `cache`'s tensors at fresh empty ones in place (set_data: registered buffers stay
// registered), for a method's setup().
void reset_cache(ClassCache& cache, int64_t classes, int64_t capacity, int64_t dim, const torch::Device& device);
// A copy with `extra` more empty slots per class (BoostAdapter's per-image P' of 3 + delta).
ClassCache widened_copy(const ClassCache& cache, int64_t extra);

// TDA's positive/negative update (fifo = false) and BoostAdapter's sorted positive update:
// the entry (key [E], entropy, prob [C] when the cache has probs) goes under `cls` when
// the class has a free slot or its entropy is below the largest one held; the class row
// is then re-sorted ascending by entropy (stable: the newcomer stays after equal ones).
// Returns whether the entry was admitted.
bool insert_lowest_entropy(ClassCache& cache, int64_t cls, const torch::Tensor& key, double entropy,
                           const torch::Tensor& prob = {});
// BoostAdapter's negative update: append under `cls`; when the class is full, the oldest
// entry is dropped (slot order = arrival order), whatever the entropies.
void insert_fifo(ClassCache& cache, int64_t cls, const torch::Tensor& key, double entropy,
                 const torch::Tensor& prob = {});

// Tip-Adapter's kernel exp(-beta (1 - query . key)) for each slot, 0 in empty slots: [C,K].
// The query [E] is used as given (TDA's multi-view query is not normalised).
torch::Tensor kernel_weights(const torch::Tensor& query, const ClassCache& cache, double beta);
// Positive cache logits [C]: alpha * sum over the class's filled slots of the kernel
// (the one-hot value of each entry is its class).
torch::Tensor positive_cache_logits(const torch::Tensor& query, const ClassCache& cache, double alpha, double beta);
// TDA's negative mask of probability vectors: 1 where low < q < high (strict), else 0.
torch::Tensor negative_mask(const torch::Tensor& probs, double low, double high);
// Negative cache logits [C]: alpha * sum over all filled slots of kernel * mask(q_slot).
// The method subtracts them.
torch::Tensor negative_cache_logits(const torch::Tensor& query, const ClassCache& cache, double alpha, double beta,
                                    double mask_low, double mask_high);

// TDA's entropy scale: nats divided by log2(C) (a quirk of the official code, §1.2 step 3;
// the values lie in [0, ln 2], and the thresholds are on this scale).
double tda_normalised_entropy(double entropy_nats, int64_t classes);
// TDA's negative-cache gate: low < normalised entropy < high (strict).
bool in_entropy_band(double normalised_entropy, double low, double high);

// The query of one test image in TDA, BoostAdapter (ImageNet variants) and DPE (§1.2 step 2).
struct ViewSummary {
  torch::Tensor feature;  // [E]: f_0, or the mean of the confident views (not renormalised)
  torch::Tensor logits;   // [C]: z_0, or the mean of the confident views' logits (keeps the graph)
  torch::Tensor probs;    // [C]: softmax(z_0), or the mean of their softmaxes
  double entropy = 0;     // nats: H(softmax z_0), or the marginal entropy of the confident views
  int64_t label = 0;      // argmax of `logits`
};
// features [V,E] (each row normalised), logits [V,C]. One view: that view. More views:
// the int(V * selection) (at least 1) of lowest entropy; view 0 is not forced in.
ViewSummary summarize_views(const torch::Tensor& features, const torch::Tensor& logits, double selection);
// The int(V * selection) views of lowest entropy (BoostAdapter's boosting samples): none
// for one view, unlike tta::confident_views, which keeps at least one.
torch::Tensor boosting_views(const torch::Tensor& logits, double selection);

// ---- DMN's dynamic memory (§2.2) ------------------------------------------------------

// DMN's pseudo-label from the int(V * selection) (at least 1) most confident views:
// per-view entropy -sum p log(p + 1e-6) selects, p_bar = mean of their softmaxes,
// label = argmax p_bar, entropy = -sum p_bar log(p_bar + 1e-8).
struct PseudoLabel {
  int64_t label = 0;
  double entropy = 0;
};
PseudoLabel dmn_pseudo_label(const torch::Tensor& logits, double selection);
// Writes (key, entropy) into class `cls` of a memory keys [C,L,E], entropies [C,L],
// counts [C] (int64): the next free slot while counts[cls] < L; then over the slot of the
// largest stored entropy if `entropy` is below it; else nothing. Returns the slot or -1.
int64_t memory_write(torch::Tensor& keys, torch::Tensor& entropies, torch::Tensor& counts, int64_t cls,
                     const torch::Tensor& key, double entropy);
// The slots in use [C,L] (bool): slot j < counts[c].
torch::Tensor memory_filled(const torch::Tensor& counts, int64_t slots);
// DMN's read-out: per class, v_c = normalise(sum_j exp(-beta (1 - query . k_cj)) k_cj) over
// the filled keys; logits [C] = scale * v_c . query. Keys are also the values. A read-out
// over several key sets (memory, text slot, few-shot features) adds their kernel sums
// before normalising, without concatenating the memories.
// Kernel-weighted sum of one key set keys [C,M,E] (filled [C,M]) -> [C,E].
torch::Tensor kernel_value_sum(const torch::Tensor& query, const torch::Tensor& keys, const torch::Tensor& filled,
                               double beta);
// scale * normalise(value_sum [C,E]) . query -> [C].
torch::Tensor readout_logits(const torch::Tensor& query, const torch::Tensor& value_sum, double scale);
// Both, for one key set.
torch::Tensor memory_readout(const torch::Tensor& query, const torch::Tensor& keys, const torch::Tensor& filled,
                             double beta, double scale);

// ---- DPE (§4.2) ------------------------------------------------------------------------

// AdamW's first step from a fresh state (§0.4): param (1 - lr wd) - lr g / (|g| + eps).
torch::Tensor adamw_first_step(const torch::Tensor& param, const torch::Tensor& grad, double lr, double eps,
                               double weight_decay);
// DPE's textual evolution: the running mean over the initial prototypes and every accepted
// T': with n accepted so far, n <- n + 1, T_g <- T_g n/(n+1) + T' /(n+1) (not renormalised).
// In place on `global`; `count` is a one-element int64 tensor.
void evolve_prototypes(torch::Tensor& global, torch::Tensor& count, const torch::Tensor& accepted);
// The classes present in a cache, ascending [K'], and their visual prototypes [K',E]:
// the mean of each one's filled keys (not normalised).
std::pair<torch::Tensor, torch::Tensor> cache_class_means(const ClassCache& cache);
// The paired InfoNCE loss of info-nce-pytorch without negatives: rows of `queries` against
// rows of `positives` (both renormalised), logits Q P^T / temperature, targets the diagonal.
torch::Tensor paired_info_nce(const torch::Tensor& queries, const torch::Tensor& positives, double temperature);

}  // namespace vlmadapt::tta
