// data.paradigm: which labels a run may use (Menghini et al., "Enhancing CLIP with CLIP",
// NeurIPS 2023; specs/METHODS.md §9.5). The images whose labels are withheld go to
// Dataset::unlabelled with label -1, so no code downstream can read them by mistake.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include <vlmadapt/core/error.h>
#include <vlmadapt/data/dataset.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace {

std::vector<Item> unlabelled_of(const std::vector<Item>& items) {
  std::vector<Item> out;
  out.reserve(items.size());
  for (const Item& it : items) out.push_back({it.ref, -1});
  return out;
}

// Items of `full_train` that `kept` does not hold (by reference), in full's order.
std::vector<Item> rest_of(const std::vector<Item>& full_train, const std::vector<Item>& kept) {
  std::set<std::string> taken;
  for (const Item& it : kept) taken.insert(it.ref);
  std::vector<Item> rest;
  for (const Item& it : full_train)
    if (!taken.count(it.ref)) rest.push_back(it);
  return rest;
}

// The seen classes of transductive zero-shot: floor(fraction * C) labels drawn with the
// seed (sorted), as the paper's int(0.62 * C).
std::vector<int64_t> draw_seen_classes(int64_t classes, double fraction, uint64_t seed) {
  std::vector<int64_t> labels(static_cast<size_t>(classes));
  for (int64_t c = 0; c < classes; ++c) labels[static_cast<size_t>(c)] = c;
  std::mt19937_64 rng(seeded::mix(seed, 0x5EE4C1A55ull));
  seeded::shuffle(labels, rng);
  labels.resize(static_cast<size_t>(std::floor(fraction * static_cast<double>(classes))));
  std::sort(labels.begin(), labels.end());
  return labels;
}

// A seeded subset of `limit` unlabelled images, in their own order.
void limit_unlabelled(std::vector<Item>& items, int limit, uint64_t seed) {
  if (limit <= 0 || items.size() <= static_cast<size_t>(limit)) return;
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(seeded::mix(seed, 0x0B1ABE11ull));
  seeded::shuffle(order, rng);
  order.resize(static_cast<size_t>(limit));
  std::sort(order.begin(), order.end());
  std::vector<Item> kept;
  for (size_t i : order) kept.push_back(items[i]);
  items = std::move(kept);
}

}  // namespace

Dataset apply_paradigm(const Dataset& full, Dataset few, const DataOptions& options) {
  const std::string& p = options.paradigm;
  if (p == "supervised") return few;
  if (p != "ssl" && p != "ul" && p != "trzsl")
    throw Error("data.paradigm: expected supervised, ssl, ul or trzsl, got '" + p + "'");
  if (options.classes != "all")
    throw Error("data.paradigm = " + p + ": data.classes must be all (got '" + options.classes +
                "'); the paradigms split labels themselves");
  const auto seed = static_cast<uint64_t>(options.seed);
  const auto classes = static_cast<int64_t>(full.classnames.size());
  few.val.clear();
  few.unlabelled_classes.clear();
  if (p == "ssl") {
    if (options.shots < 1)
      throw Error("data.shots: ssl needs the labelled images per class (the paper's 2), got " +
                  std::to_string(options.shots));
    few.unlabelled = unlabelled_of(rest_of(full.train, few.train));
  } else if (p == "ul") {
    few.unlabelled = unlabelled_of(full.train);
    few.train.clear();
  } else {
    if (!(options.seen_fraction > 0 && options.seen_fraction < 1))
      throw Error("data.seen_fraction: expected a fraction in (0, 1) for trzsl, got " +
                  std::to_string(options.seen_fraction));
    const auto seen = draw_seen_classes(classes, options.seen_fraction, seed);
    if (seen.empty() || static_cast<int64_t>(seen.size()) == classes)
      throw Error("data.seen_fraction: " + std::to_string(options.seen_fraction) + " of " + std::to_string(classes) +
                  " classes leaves " + (seen.empty() ? "no seen" : "no unseen") + " class");
    std::vector<bool> is_seen(static_cast<size_t>(classes), false);
    for (int64_t c : seen) is_seen[static_cast<size_t>(c)] = true;
    std::vector<Item> labelled, hidden;
    for (const Item& it : few.train)
      if (is_seen[static_cast<size_t>(it.label)]) labelled.push_back(it);
    for (const Item& it : full.train)
      if (!is_seen[static_cast<size_t>(it.label)]) hidden.push_back(it);
    few.train = std::move(labelled);
    few.unlabelled = unlabelled_of(hidden);
    for (int64_t c = 0; c < classes; ++c)
      if (!is_seen[static_cast<size_t>(c)]) few.unlabelled_classes.push_back(c);
  }
  limit_unlabelled(few.unlabelled, options.unlabelled_limit, seed);
  if (few.unlabelled.empty())
    throw Error("data.paradigm = " + p + ": no unlabelled images are left in " + full.name +
                "'s train split (data.shots = " + std::to_string(options.shots) + " takes them all)");
  return few;
}

}  // namespace vlmadapt
