// Model soups applied to prompts (METHODS.md 13; Wortsman et al. 2022): the learned
// states of several finished runs averaged element-wise into one, written and evaluated
// as a run of its own.
//
//   uniform: the mean of every ingredient;
//   greedy:  ingredients sorted by validation top-1 (descending); the soup starts with
//            the best, and each next one is kept only if the soup with it does not score
//            lower on validation (the paper's Algorithm 1; `strict` keeps it only when the
//            score rises, as the model-soups code).
//
// Ingredients must share the method, the model, the class set and every state key with
// its shape (so the option values that set shapes); other option values may differ (a
// soup of different learning rates or seeds is the point), and the soup's recipe is the
// first ingredient's. Validation is the first ingredient's val split without any image
// that an ingredient trained on (with no separate val split, val is drawn from the rest
// of train, so another seed's train images could be there); the test split is never
// looked at before the soup is fixed.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {

struct SoupOptions {
  std::vector<std::string> runs;  // finished run folders, the ingredients
  std::string out;                // the soup's run folder
  bool greedy = false;
  bool strict = false;            // greedy: keep an ingredient only if validation top-1 rises
};

struct SoupIngredient {
  std::string run;
  double val_top1 = -1;  // greedy: the ingredient alone on validation; -1 when not measured
  bool kept = true;
};

struct SoupResult {
  std::string dir;
  std::vector<SoupIngredient> ingredients;  // in the order considered (greedy: by validation top-1)
  nlohmann::json metrics;                   // the soup's metrics.json
};

// The element-wise mean of `states`, each tensor in its own dtype (computed in float64).
// They must hold the same keys with the same shapes; a tensor of integers or booleans
// must be equal in every state. Errors name the state (`names`), the key and the shapes.
TensorMap average_states(const std::vector<TensorMap>& states, const std::vector<std::string>& names);

// Checks the ingredients, mixes the soup, writes options.out as a run folder (recipe.ini,
// split.json, method.safetensors, metrics.json, run.json with "kind": "soup", its
// ingredients in order and which were kept) and evaluates it as any run: val and test,
// base/new/harmonic mean under base-to-new, and eval.transfer's datasets.
SoupResult make_soup(const SoupOptions& options, std::ostream& log);

}  // namespace vlmadapt
