#include <vlmadapt/engine/pseudolabels.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/data/loader.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/engine/distributed.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/trainer.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Entry {
  double confidence;
  int64_t image;
};

// Offers image `i` with `confidence` to `board`; true when it joins.
bool offer(std::vector<Entry>& board, int64_t k, int64_t i, double confidence) {
  if (static_cast<int64_t>(board.size()) < k) {
    board.push_back({confidence, i});
    return true;
  }
  if (k == 0 || !(board.back().confidence < confidence)) return false;
  board.push_back({confidence, i});
  std::stable_sort(board.begin(), board.end(), [](const Entry& a, const Entry& b) { return a.confidence > b.confidence; });
  board.resize(static_cast<size_t>(k));
  return true;
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> select_pseudolabels(const torch::Tensor& probs, int64_t k) {
  if (probs.dim() != 2) throw Error("select_pseudolabels: expected probabilities [N,C]");
  if (k < 0) throw Error("select_pseudolabels: expected k >= 0, got " + std::to_string(k));
  const auto p = probs.to(torch::kDouble).contiguous();
  const int64_t n = p.size(0), classes = p.size(1);
  const double* data = p.data_ptr<double>();
  std::vector<std::vector<Entry>> boards(static_cast<size_t>(classes));
  std::vector<int64_t> order(static_cast<size_t>(classes));
  for (int64_t i = 0; i < n; ++i) {
    const double* row = data + i * classes;
    const int64_t top = std::max_element(row, row + classes) - row;  // the first of tied maxima, as argmax
    if (offer(boards[static_cast<size_t>(top)], k, i, row[top])) continue;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
    for (int64_t c : order)
      if (c != top) offer(boards[static_cast<size_t>(c)], k, i, row[c]);
  }
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t c = 0; c < classes; ++c)
    for (const Entry& e : boards[static_cast<size_t>(c)]) out.emplace_back(e.image, c);
  return out;
}

torch::Tensor pseudolabel_scores(RunContext& c, const Dataset& data, const std::vector<Item>& items, int64_t round) {
  Method& method = *c.method;
  const auto device = c.device();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  if (method.contract().input == Input::Features) {
    FeatureSet f = c.test_features(data, items);
    const int64_t bs = c.recipe.eval.batch_size;
    for (int64_t start = 0; start < f.features.size(0); start += bs) {
      const int64_t len = std::min(bs, f.features.size(0) - start);
      Batch b{{}, f.features.narrow(0, start, len).to(device), {}};
      parts.push_back(method.pseudolabel_logits(b, round).to(torch::kFloat).cpu());
    }
  } else {
    BatchLoader loader(data, items, c.test_loader());
    for (PixelBatch pb; loader.next(pb);)
      parts.push_back(method.pseudolabel_logits(method_batch(method, c.clip, pb.pixels.to(device), {}), round)
                          .to(torch::kFloat).cpu());
  }
  if (parts.empty()) return torch::zeros({0, static_cast<int64_t>(data.classnames.size())});
  return torch::cat(parts, 0);
}

namespace {

// The pseudolabelled items of a round: K per candidate class, chosen by the method's
// scores, as train items (label = the class, pseudo = true).
std::vector<Item> choose_pseudolabels(RunContext& c, const Dataset& task, int64_t round, int64_t k) {
  const torch::Tensor scores = pseudolabel_scores(c, task, task.unlabelled, round);
  std::vector<int64_t> candidates = task.unlabelled_classes;
  if (candidates.empty()) {
    candidates.resize(task.classnames.size());
    std::iota(candidates.begin(), candidates.end(), 0);
  }
  const auto probs = scores.index_select(1, torch::tensor(candidates, torch::kLong)).softmax(1);
  std::vector<Item> out;
  for (const auto& [image, column] : select_pseudolabels(probs, k))
    out.push_back({task.unlabelled[static_cast<size_t>(image)].ref, candidates[static_cast<size_t>(column)], true});
  return out;
}

void save_pseudolabels(const fs::path& file, const std::vector<Item>& items, int64_t k) {
  json list = json::array();
  for (const Item& it : items) list.push_back({it.ref, it.label});
  write_file_atomic(file.string(), json{{"per_class", k}, {"pseudolabels", list}}.dump(1) + "\n");
}

std::vector<Item> load_pseudolabels(const fs::path& file, const Dataset& task) {
  std::set<std::string> known;
  for (const Item& it : task.unlabelled) known.insert(it.ref);
  std::vector<Item> out;
  try {
    const json saved = read_json(file);  // kept alive for the loop below
    for (const json& e : saved.at("pseudolabels")) {
      Item it{e.at(0).get<std::string>(), e.at(1).get<int64_t>(), true};
      if (!known.count(it.ref) || it.label < 0 || it.label >= static_cast<int64_t>(task.classnames.size()))
        throw Error(file.string() + ": pseudolabel of '" + it.ref + "' is not an unlabelled image and class of this run");
      out.push_back(std::move(it));
    }
  } catch (const json::exception& e) {
    throw Error(file.string() + ": expected {\"pseudolabels\": [[ref, class], ...]} (" + e.what() + ")");
  }
  return out;
}

// Rounds committed in <rounds>/latest.json, and the loss of the last of them.
std::pair<int64_t, double> committed_rounds(const fs::path& root) {
  const fs::path latest = root / "latest.json";
  if (!fs::exists(latest)) return {0, 0.0};
  try {
    const json j = read_json(latest);
    return {j.at("round").get<int64_t>(), j.at("loss").get<double>()};
  } catch (const json::exception& e) {
    throw Error(latest.string() + ": corrupt round index: " + e.what());
  }
}

}  // namespace

double train_in_rounds(RunContext& c, const std::string& run_dir, bool resume, std::ostream& log) {
  Method& method = *c.method;
  const Dataset& task = c.task;
  if (task.unlabelled.empty())
    throw Error("method " + c.recipe.method + " learns from pseudolabels of unlabelled images, and data.paradigm = " +
                c.recipe.data.paradigm + " gives none (set data.paradigm = ssl, ul or trzsl)");
  const fs::path root = fs::path(run_dir) / "rounds";
  // Distributed: rank 0 writes the rounds; every rank reads what a resumed run left
  // (and only then: on a fresh run rank 0 may be removing the old rounds meanwhile).
  const bool main = dist::world().main();
  if (main && !resume) fs::remove_all(root);
  if (main) fs::create_directories(root);
  const int64_t rounds = method.pseudolabel_rounds();
  auto [done, loss] = resume ? committed_rounds(root) : std::pair<int64_t, double>{0, 0.0};
  if (done > rounds) throw Error((root / "latest.json").string() + ": records " + std::to_string(done) +
                                 " rounds; the method runs " + std::to_string(rounds));
  if (done > 0) {
    const auto state = (root / ("round_" + std::to_string(done)) / "method.safetensors").string();
    method.load_state(read_safetensors(state), state);
    log << "resuming after pseudolabel round " << done << " of " << rounds << "\n";
  }
  const int64_t classes = static_cast<int64_t>(task.unlabelled_classes.empty() ? task.classnames.size()
                                                                               : task.unlabelled_classes.size());
  for (int64_t r = done; r < rounds; ++r) {
    const fs::path dir = root / ("round_" + std::to_string(r + 1));
    if (main) fs::create_directories(dir);
    // Each round starts from the same random state, whether or not the run was resumed.
    torch::manual_seed(seeded::mix(static_cast<uint64_t>(c.recipe.data.seed), static_cast<uint64_t>(r), 0x9A0D5ull));
    const int64_t k = method.pseudolabels_per_class(r, static_cast<int64_t>(task.unlabelled.size()), classes);
    std::vector<Item> pseudo;
    if (resume && fs::exists(dir / "pseudolabels.json")) {
      pseudo = load_pseudolabels(dir / "pseudolabels.json", task);
    } else {
      pseudo = choose_pseudolabels(c, task, r, k);
      if (main) save_pseudolabels(dir / "pseudolabels.json", pseudo, k);
    }
    Dataset data = task;
    data.train.insert(data.train.end(), pseudo.begin(), pseudo.end());
    if (data.train.empty()) throw Error("pseudolabel round " + std::to_string(r + 1) + ": no labelled image and no pseudolabel to train on");
    log << "pseudolabel round " << r + 1 << "/" << rounds << ": " << task.train.size() << " labelled + "
        << pseudo.size() << " pseudolabelled images (" << k << " per class)\n";
    method.on_round_begin({r, rounds, static_cast<int64_t>(task.train.size()), static_cast<int64_t>(pseudo.size()),
                           c.recipe.data.paradigm});
    const fs::path checkpoint = dir / "checkpoint";
    Trainer trainer({&method, c.clip, &data, c.recipe, checkpoint.string(), c.cache.get()});
    loss = trainer.train(resume && fs::exists(checkpoint / "latest.json"));
    if (main) {
      write_safetensors((dir / "method.safetensors").string(), method.state());
      write_file_atomic((root / "latest.json").string(), json{{"round", r + 1}, {"loss", loss}, {"rounds", rounds}}.dump());
      fs::remove_all(checkpoint);  // the round's state is committed; its epochs are not needed again
      if (r > 0) fs::remove(root / ("round_" + std::to_string(r)) / "method.safetensors");
    }
    kill_point("round", r + 1);
  }
  return loss;
}

}  // namespace vlmadapt
