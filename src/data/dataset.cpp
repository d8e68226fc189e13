// The dataset front door: option binding, dispatch by name, the built-in class-name
// and template tables, and CoOp's few-shot protocol on top of any dataset (sampling,
// base-to-new class split, saving and re-reading a drawn split). The dataset readers
// themselves live in dataset_{coop,imagenet,files,fashion_mnist}.cpp.
#include <vlmadapt/data/dataset.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <unordered_map>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

#include "core/resources.h"
#include "core/seeded.h"
#include "dataset_readers.h"

namespace vlmadapt {

// Readers defined in the dataset_*.cpp files (private to the library).
namespace detail {
Dataset open_fashion_mnist(const DataOptions& options);
Dataset open_coop(const DataOptions& options);
Dataset open_imagenet_family(const DataOptions& options);
Dataset open_folder(const DataOptions& options);
Dataset open_list(const DataOptions& options);
}  // namespace detail

namespace {

using json = nlohmann::json;

const char* const kCoopNames[] = {"oxford_pets", "caltech101", "dtd", "eurosat", "food101",
                                  "flowers102", "stanford_cars", "fgvc_aircraft", "sun397",
                                  "ucf101"};
const char* const kImageNetNames[] = {"imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a",
                                      "imagenet_r"};

template <size_t N>
bool in(const char* const (&names)[N], const std::string& name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

std::string known_datasets() {
  std::string out = "fashion_mnist, folder, list";
  for (const char* n : kCoopNames) out += std::string(", ") + n;
  for (const char* n : kImageNetNames) out += std::string(", ") + n;
  return out;
}

// The test subset of data.test_limit is drawn with a constant seed, not data.seed, so every
// seed and every method of a benchmark is evaluated on the same images.
constexpr uint64_t kTestLimitSeed = 20240611;

void apply_test_limit(Dataset& d, int limit) {
  if (limit <= 0 || size_t(limit) >= d.test.size()) return;
  std::vector<int64_t> order(d.test.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
  std::mt19937_64 rng(kTestLimitSeed);
  seeded::shuffle(order, rng);
  order.resize(size_t(limit));
  std::sort(order.begin(), order.end());  // keep the split's own order
  std::vector<Item> kept;
  kept.reserve(order.size());
  for (int64_t i : order) kept.push_back(d.test[size_t(i)]);
  d.test = std::move(kept);
}

// Positions of the items drawn: per label (ascending), `k` items without replacement as
// CoOp's generate_fewshot_dataset (random.sample), or every item of a class with fewer.
std::vector<size_t> draw_per_class(const std::vector<Item>& items, int k, std::mt19937_64& rng) {
  std::map<int64_t, std::vector<size_t>> by_label;
  for (size_t i = 0; i < items.size(); ++i) by_label[items[i].label].push_back(i);
  std::vector<size_t> picked;
  for (auto& [label, pos] : by_label) {
    if (pos.size() <= size_t(k)) {
      picked.insert(picked.end(), pos.begin(), pos.end());
      continue;
    }
    // Partial Fisher-Yates: the first k slots end up a uniform k-sample, in draw order.
    for (size_t i = 0; i < size_t(k); ++i) {
      const size_t j = i + size_t(seeded::below(rng, pos.size() - i));
      std::swap(pos[i], pos[j]);
      picked.push_back(pos[i]);
    }
  }
  return picked;
}

std::vector<Item> take(const std::vector<Item>& items, const std::vector<size_t>& pos) {
  std::vector<Item> out;
  out.reserve(pos.size());
  for (size_t p : pos) out.push_back(items[p]);
  return out;
}

const json& prompts_table(bool imagenet) {
  // Parsed once; function-local statics are initialised thread-safely.
  static const json datasets = json::parse(resources::datasets_prompts_json());
  static const json in1k = json::parse(resources::imagenet_prompts_json());
  return imagenet ? in1k : datasets;
}

json items_json(const Dataset& d, const std::vector<Item>& items) {
  json out = json::array();
  for (const Item& it : items)
    out.push_back({it.ref, it.label, d.classnames.at(size_t(it.label))});
  return out;
}

}  // namespace

const std::vector<Item>& Dataset::split(const std::string& which) const {
  if (which == "train") return train;
  if (which == "val") return val;
  if (which == "test") return test;
  throw Error("split '" + which + "' of dataset " + name + ": expected train, val or test");
}

void DataOptions::bind(OptionSet& set) {
  set.add("dataset", dataset, "dataset name: " + known_datasets())
      .add("root", root, "image root (\"\" = the dataset's default; CoOp datasets: DATASET.ROOT)")
      .add("split_file", split_file, "CoOp split_zhou_*.json, or the list file of dataset=list")
      .add("classnames_file", classnames_file,
           "ImageNet-style \"wnid name\" lines, or one class name per line (folder, list)")
      .add("shots", shots, "training images per class; 0 = the full train split").at_least(0)
      .add("val_shots", val_shots, "validation images per class; -1 = min(shots, 4) as CoOp").at_least(-1)
      .add("seed", seed, "seed of the few-shot draw (and of training)")
      .add("classes", classes, "all | base | new: base-to-new split of the classes")
      .add("corruption", corruption,
           "ImageNet-C style corruption of every image (gaussian_noise, defocus_blur, ...); \"\" = none")
      .add("severity", severity, "corruption severity 1..5 (with data.corruption)").range(1, 5)
      .add("test_limit", test_limit, ">0: a fixed seeded subset of this many test images").at_least(0)
      .add("workers", workers, "image decoding/augmentation threads (0: on the calling thread)").range(0, 256)
      .add("support", support,
           "folder <class>/<images> of extra labelled images for the support set (cache) of training-free "
           "methods, e.g. retrieved or generated ones as CapS-Adapter; folder names match class names ('_' as ' ', "
           "any case), another name is an error; \"\" = none")
      .add("support_mode", support_mode, "add: the support folder's images join the few-shot train images; replace: they are the support set",
           {"add", "replace"})
      .add("paradigm", paradigm,
           "which labels a run may use: supervised; ssl (data.shots labelled per class, the rest of the train split "
           "unlabelled); ul (no labels); trzsl (transductive zero-shot: the seen classes labelled, the unseen ones' "
           "images unlabelled, H of seen and unseen accuracy reported)",
           {"supervised", "ssl", "ul", "trzsl"})
      .add("seen_fraction", seen_fraction, "trzsl: the share of classes that are seen (the paper's 0.62)")
      .add("unlabelled_limit", unlabelled_limit, ">0: a seeded subset of this many unlabelled images").at_least(0);
}

Dataset open_dataset(const DataOptions& options) {
  // data.corruption is not applied here: the caller wraps the result with with_corruption
  // (corruption.h), which keeps the refs, so saved splits stay valid for both.
  const std::string& name = options.dataset;
  Dataset d;
  if (name == "fashion_mnist") d = detail::open_fashion_mnist(options);
  else if (name == "folder") d = detail::open_folder(options);
  else if (name == "list") d = detail::open_list(options);
  else if (in(kCoopNames, name)) d = detail::open_coop(options);
  else if (in(kImageNetNames, name)) d = detail::open_imagenet_family(options);
  else throw Error("data.dataset: unknown dataset '" + name + "' (expected one of: " +
                   known_datasets() + ")");
  if (options.test_limit < 0)
    throw Error("data.test_limit: expected >= 0, got " + std::to_string(options.test_limit));
  apply_test_limit(d, options.test_limit);
  return d;
}

Dataset sample_few_shot(const Dataset& full, int shots, int val_shots, uint64_t seed) {
  if (shots < 0) throw Error("data.shots: expected >= 0, got " + std::to_string(shots));
  if (val_shots < -1)
    throw Error("data.val_shots: expected -1 or >= 0, got " + std::to_string(val_shots));
  // CoOp's num_shots < 1 keeps a split whole, for train and val alike.
  const int vk = val_shots < 0 ? std::min(shots, 4) : val_shots;
  Dataset out = full;
  std::mt19937_64 rng(seed);
  std::vector<size_t> picked;
  if (shots > 0) {
    picked = draw_per_class(full.train, shots, rng);
    out.train = take(full.train, picked);
  }
  if (!full.val.empty()) {
    out.val = vk > 0 ? take(full.val, draw_per_class(full.val, vk, rng)) : full.val;
    return out;
  }
  // No val split (Fashion-MNIST): val comes from the train items not drawn for training.
  // With shots = 0 the whole train split is kept, so an explicit val_shots draws val from
  // it (for zero-shot and test-time methods, which never train on it).
  std::vector<bool> used(full.train.size(), shots == 0 && val_shots <= 0);
  for (size_t p : picked) used[p] = true;
  std::vector<Item> rest;
  for (size_t i = 0; i < full.train.size(); ++i)
    if (!used[i]) rest.push_back(full.train[i]);
  out.val = vk > 0 ? take(rest, draw_per_class(rest, vk, rng)) : rest;
  return out;
}

Dataset subsample_classes(const Dataset& full, const std::string& which) {
  if (which == "all") return full;
  if (which != "base" && which != "new")
    throw Error("data.classes: expected all, base or new, got '" + which + "'");
  const int64_t n = int64_t(full.classnames.size());
  const int64_t m = (n + 1) / 2;  // ceil(n / 2), as CoOp's math.ceil(n / 2)
  const int64_t lo = which == "base" ? 0 : m, hi = which == "base" ? m : n;
  Dataset out = full;
  auto filter = [&](const std::vector<Item>& items) {
    std::vector<Item> kept;
    for (const Item& it : items)
      if (it.label >= lo && it.label < hi) kept.push_back({it.ref, it.label - lo});
    return kept;
  };
  out.train = filter(full.train);
  out.val = filter(full.val);
  out.test = filter(full.test);
  out.classnames.assign(full.classnames.begin() + lo, full.classnames.begin() + hi);
  if (!full.parent_labels.empty())
    out.parent_labels.assign(full.parent_labels.begin() + lo, full.parent_labels.begin() + hi);
  return out;
}

Dataset prepare_dataset(const DataOptions& options) {
  const Dataset full = open_dataset(options);
  if (options.seed < 0) throw Error("data.seed: expected >= 0, got " + std::to_string(options.seed));
  return subsample_classes(
      sample_few_shot(full, options.shots, options.val_shots, uint64_t(options.seed)),
      options.classes);
}

// The layout is CoOp's split_zhou ([ref, label, classname] per item) plus the class list,
// so a saved split can also be read as a CoOp split file.
void save_split(const Dataset& dataset, const std::string& path) {
  json j;
  j["dataset"] = dataset.name;
  j["classnames"] = dataset.classnames;
  if (!dataset.parent_labels.empty()) j["parent_labels"] = dataset.parent_labels;
  j["train"] = items_json(dataset, dataset.train);
  j["val"] = items_json(dataset, dataset.val);
  j["test"] = items_json(dataset, dataset.test);
  if (!dataset.unlabelled.empty()) {  // refs only: their labels are withheld
    json refs = json::array();
    for (const Item& it : dataset.unlabelled) refs.push_back(it.ref);
    j["unlabelled"] = refs;
    j["unlabelled_classes"] = dataset.unlabelled_classes;
  }
  write_file_atomic(path, j.dump(1) + "\n");
}

namespace {

json parse_json_file(const std::string& path) {
  const std::string text = read_file(path, detail::kMaxSplitFileBytes, "a saved split");
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
}

std::vector<std::string> string_list(const json& j, const std::string& path, const char* key) {
  if (!j.contains(key) || !j[key].is_array())
    throw Error(path + ": expected key \"" + key + "\" holding a list of strings");
  std::vector<std::string> out;
  for (const json& v : j[key]) {
    if (!v.is_string()) throw Error(path + ": \"" + key + "\" must hold only strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

// One split of a saved file, checked against the full dataset: every ref must exist there
// and carry the same class (by name, so subsampled and relabelled splits check too).
std::vector<Item> read_saved_items(const json& j, const char* split, const std::string& path,
                                   const Dataset& full, const std::vector<std::string>& names,
                                   const std::unordered_map<std::string, int64_t>& known) {
  if (!j.contains(split) || !j[split].is_array())
    throw Error(path + ": expected key \"" + split + "\" holding a list of [ref, label, ...]");
  std::vector<Item> out;
  const json& arr = j[split];
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& e = arr[i];
    const std::string where = path + ": " + split + "[" + std::to_string(i) + "]";
    if (!e.is_array() || e.size() < 2 || !e[0].is_string() || !e[1].is_number_integer())
      throw Error(where + ": expected [ref, label, classname]");
    Item it{e[0].get<std::string>(), e[1].get<int64_t>()};
    if (it.label < 0 || it.label >= int64_t(names.size()))
      throw Error(where + ": label " + std::to_string(it.label) + " out of range 0.." +
                  std::to_string(int64_t(names.size()) - 1));
    const auto found = known.find(it.ref);
    if (found == known.end())
      throw Error(where + ": image '" + it.ref + "' is not in dataset " + full.name +
                  " (root '" + full.root + "')");
    const std::string& expected = full.classnames.at(size_t(found->second));
    if (names[size_t(it.label)] != expected)
      throw Error(where + ": image '" + it.ref + "' has class '" + names[size_t(it.label)] +
                  "' but dataset " + full.name + " says '" + expected + "'");
    out.push_back(std::move(it));
  }
  return out;
}

}  // namespace

Dataset load_split(const Dataset& full, const std::string& path) {
  const json j = parse_json_file(path);
  if (!j.is_object()) throw Error(path + ": expected a JSON object (a saved split)");
  std::unordered_map<std::string, int64_t> known;
  for (const auto* items : {&full.train, &full.val, &full.test})
    for (const Item& it : *items) known.emplace(it.ref, it.label);
  Dataset out = full;
  out.classnames = string_list(j, path, "classnames");
  out.train = read_saved_items(j, "train", path, full, out.classnames, known);
  out.val = read_saved_items(j, "val", path, full, out.classnames, known);
  out.test = read_saved_items(j, "test", path, full, out.classnames, known);
  out.unlabelled.clear();
  out.unlabelled_classes.clear();
  if (j.contains("unlabelled")) {
    for (const auto& ref : string_list(j, path, "unlabelled")) {
      if (!known.count(ref)) throw Error(path + ": unlabelled image '" + ref + "' is not in dataset " + full.name);
      out.unlabelled.push_back({ref, -1});
    }
    try {
      out.unlabelled_classes = j.at("unlabelled_classes").get<std::vector<int64_t>>();
    } catch (const json::exception&) {
      throw Error(path + ": expected \"unlabelled_classes\", a list of class indices");
    }
    for (int64_t c : out.unlabelled_classes)
      if (c < 0 || c >= int64_t(out.classnames.size()))
        throw Error(path + ": unlabelled class " + std::to_string(c) + " out of range");
  }
  out.parent_labels.clear();
  if (j.contains("parent_labels")) {
    try {
      out.parent_labels = j["parent_labels"].get<std::vector<int64_t>>();
    } catch (const json::exception&) {
      throw Error(path + ": \"parent_labels\" must be a list of integers");
    }
    if (out.parent_labels.size() != out.classnames.size())
      throw Error(path + ": \"parent_labels\" must have one entry per class name");
  } else if (out.classnames == full.classnames) {
    out.parent_labels = full.parent_labels;
  }
  return out;
}

std::vector<std::string> builtin_template_pool() {
  std::vector<std::string> pool;
  std::set<std::string> seen;
  auto add = [&](const std::vector<std::string>& templates) {
    for (const auto& t : templates)
      if (seen.insert(t).second) pool.push_back(t);
  };
  add(builtin_prompts("ImageNet").templates);
  for (const auto& kv : prompts_table(false).items()) add(builtin_prompts(kv.key()).templates);
  return pool;
}

ClassPrompts builtin_prompts(const std::string& name) {
  const bool imagenet = name == "ImageNet";
  const json& table = prompts_table(imagenet);
  const json* entry = &table;
  if (!imagenet) {
    if (!table.contains(name)) {
      std::string keys = "ImageNet";
      for (const auto& kv : table.items()) keys += ", " + kv.key();
      throw Error("built-in prompts: unknown dataset '" + name + "' (expected one of: " + keys +
                  ")");
    }
    entry = &table[name];
  }
  ClassPrompts out;
  out.classnames = (*entry)["classes"].get<std::vector<std::string>>();
  out.templates = (*entry)["templates"].get<std::vector<std::string>>();
  return out;
}

}  // namespace vlmadapt
