// The order in which a test split reaches a test-time method (TTA_ONLINE.md section 9).
// Online methods carry a memory from image to image, so their accuracy depends on the
// order; the official codes use one shuffled pass, while a camera sees classes in runs.
//   shuffled  - a seeded permutation of the split (the official codes' protocol);
//   by_class  - classes in a random order, each class's images shuffled and contiguous
//               (StatA's "separate" streams);
//   dirichlet - StatA's correlated streams: one slot per class; each class's images, in
//               split order, are cut into consecutive chunks with proportions drawn from
//               Dirichlet(concentration) over the slots; chunk s joins slot s; each slot
//               is shuffled and the slots follow each other. A small concentration puts
//               a class in few slots (StatA: 0.1 low, 0.01 medium, 0.001 high correlation).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vlmadapt {

enum class StreamOrder { Shuffled, ByClass, Dirichlet };
inline const std::vector<std::pair<StreamOrder, std::string>>& enum_names(StreamOrder) {
  static const std::vector<std::pair<StreamOrder, std::string>> n{
      {StreamOrder::Shuffled, "shuffled"}, {StreamOrder::ByClass, "by_class"}, {StreamOrder::Dirichlet, "dirichlet"}};
  return n;
}

// The positions of the split's items in stream order: a permutation of [0, labels.size()).
// The same (labels, order, concentration, seed) give the same stream on every platform.
// Throws vlmadapt::Error for a concentration <= 0 (or not finite) under dirichlet.
std::vector<int64_t> stream_order(const std::vector<int64_t>& labels, StreamOrder order, double concentration,
                                  uint64_t seed);

// A Dirichlet(concentration, ..., concentration) draw over n slots, computed in log space
// so that concentrations down to 1e-6 give proportions rather than 0/0.
std::vector<double> dirichlet_draw(int64_t n, double concentration, uint64_t seed);

// Expected tail accuracy (OGA): the mean of the worst 10% of the runs' accuracies (at
// least one run).
double tail_mean(std::vector<double> run_values, double share = 0.1);

}  // namespace vlmadapt
