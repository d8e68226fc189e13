// Datasets as lists of (image reference, label) with class names and prompt
// templates, and the few-shot protocol of CoOp on top of them.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <vlmadapt/data/image.h>
#include <vlmadapt/core/options.h>

namespace vlmadapt {

struct Item {
  std::string ref;    // a path relative to the dataset root, or an in-memory id ("train/17")
  int64_t label = 0;
  bool pseudo = false;  // the label is a pseudolabel (training rounds on unlabelled images)
};

struct Dataset {
  std::string name;                     // "fashion_mnist", "oxford_pets", ...
  std::vector<std::string> classnames;  // index = label
  std::vector<std::string> templates;   // CLIP's templates for it ("a photo of a {}.")
  std::vector<Item> train, val, test;
  std::string root;                     // where refs resolve; part of feature-cache keys
  std::function<Image(const std::string& ref)> load;  // decodes one item's image
  // Test-only ImageNet variants (imagenet_v2, imagenet_a, imagenet_r, imagenet_sketch): the
  // ImageNet-1k index of each label, so a 1000-way classifier can be evaluated on them.
  // Empty when the labels are not a view of another label space.
  std::vector<int64_t> parent_labels;
  // data.paradigm ssl | ul | trzsl: the train images whose labels a run may not use
  // (their labels are -1), and the classes they may belong to (transductive zero-shot:
  // the unseen ones; empty = every class). Empty for supervised runs.
  std::vector<Item> unlabelled;
  std::vector<int64_t> unlabelled_classes;

  const std::vector<Item>& split(const std::string& name) const;  // "train", "val", "test"
};

struct DataOptions {
  std::string dataset = "fashion_mnist";
  std::string root;             // image root ("" = the dataset's default)
  std::string split_file;       // CoOp split_zhou_*.json, or a list file
  std::string classnames_file;  // ImageNet-style "wnid name" lines, or one name per line
  int shots = 16;               // per class; 0 = the full train split
  int val_shots = -1;           // -1 = min(shots, 4), as CoOp
  int seed = 1;
  std::string classes = "all";  // all | base | new (base-to-new protocol)
  std::string corruption;       // ImageNet-C style name, "" = none
  int severity = 3;
  int test_limit = 0;           // >0: a fixed, seeded subset of the test split
  int workers = 2;              // decoding/augmentation threads
  std::string support;          // a folder of extra labelled images for the support set of training-free methods
  std::string support_mode = "add";  // add | replace: with the few-shot train images, or instead of them
  // Which labels a run may use (apply_paradigm): supervised | ssl | ul | trzsl.
  std::string paradigm = "supervised";
  double seen_fraction = 0.62;  // trzsl: the share of classes that are seen (labelled)
  int unlabelled_limit = 0;     // >0: a seeded subset of this many unlabelled images
  void bind(OptionSet& set);
};

// Opens a dataset by name: fashion_mnist, the 11 CoOp datasets (oxford_pets, caltech101,
// dtd, eurosat, food101, flowers102, stanford_cars, fgvc_aircraft, sun397, ucf101,
// imagenet), imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r, folder, list.
// Throws vlmadapt::Error naming the missing file or folder. Applies data.test_limit (a
// subset drawn with a constant seed, the same for every data.seed); data.corruption is left
// to with_corruption (corruption.h), and shots/classes to the functions below.
Dataset open_dataset(const DataOptions& options);

// K items per class drawn with `seed` (std::mt19937_64 through src/seeded.h, so the same
// draw on every platform); val gets `val_shots` per class (min(K,4) by default)
// from the val split, or from the rest of train when the dataset has no val split.
// As CoOp, shots = 0 keeps train whole and a val count of 0 keeps val whole; test is kept.
Dataset sample_few_shot(const Dataset& full, int shots, int val_shots, uint64_t seed);
// Base-to-new: base = first ceil(n/2) labels, new = the rest, each relabelled from 0.
Dataset subsample_classes(const Dataset& full, const std::string& which);
// The whole CoOp protocol of a recipe: open_dataset, sample_few_shot(shots, val_shots,
// seed), then subsample_classes(classes) -- the order of CoOp's dataset classes. No
// corruption (see with_corruption) and no split file (see save_split/load_split).
Dataset prepare_dataset(const DataOptions& options);

// data.support: extra labelled images in <folder>/<class>/<images> (all in `train`), for
// the support set of training-free methods (CapS-Adapter's retrieved or generated
// images). A class folder's name matches a class name with '_' read as ' ', ignoring
// case; any other folder is an error naming it.
Dataset open_support_folder(const std::string& folder, const std::vector<std::string>& classnames);
// Every image under `folder` (recursively, sorted), unlabelled, in `test` (ZPE's
// pretraining-distribution images). `key` names the option in errors.
Dataset open_image_folder(const std::string& folder, const std::string& key);

// data.paradigm over a drawn few-shot split `few` of `full` (Menghini et al. 2023,
// specs/METHODS.md §9.5): supervised keeps it; ssl keeps its `shots` labelled images per
// class and makes the rest of full's train split unlabelled; ul makes the whole train
// split unlabelled (no labelled image); trzsl draws floor(seen_fraction * C) seen classes
// with the seed, keeps the train images of those (all of them with shots = 0) and makes
// the unseen classes' train images unlabelled. The validation split is emptied under
// ssl, ul and trzsl: its labels are what these paradigms do not have. Unlabelled images
// keep full's order (a seeded subset of data.unlabelled_limit of them).
Dataset apply_paradigm(const Dataset& full, Dataset few, const DataOptions& options);

// The drawn split as JSON (refs and labels of train/val/test, class names), and back.
void save_split(const Dataset& dataset, const std::string& path);
Dataset load_split(const Dataset& full, const std::string& path);

// Class names and templates of CLIP's evaluation datasets, built in (third_party/clip).
// `name` is the key of datasets_prompts.json ("OxfordPets") or "ImageNet".
struct ClassPrompts {
  std::vector<std::string> classnames;
  std::vector<std::string> templates;
};
ClassPrompts builtin_prompts(const std::string& name);
// ZPE's prompt pool: the union of every built-in dataset's templates (ImageNet's first),
// each once, in first-seen order.
std::vector<std::string> builtin_template_pool();

}  // namespace vlmadapt
