// Recipes: INI files (read by Boost.Program_options) with sections [data] [model]
// [train] [eval] and one per method. Several files compose, later ones win;
// `--set key=value` overrides any key; an unknown key is an error that suggests
// the nearest known key.
//
//   # comment ('#' starts a comment anywhere, so values cannot contain it)
//   include = ../common/base.ini   # read first, relative to this file; this file wins
//   method = coop                  # top-level keys: include, method, name, output, force
//   [train]
//   lr = 0.002
//   [coop]                         # any registered method's section is checked; only
//   n_ctx = 16                     # the chosen method's values reach method_values
//
// Lists are '|'-separated; see OptionSet for the value syntax. Shipped recipes are in
// recipes/ (datasets/<name>.ini, <method>/<method>.ini).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <vlmadapt/data/dataset.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/tta.h>
#include <vlmadapt/core/options.h>
#include <vlmadapt/engine/stream_order.h>

namespace vlmadapt {

enum class Optimizer { Sgd, Adam, AdamW };
// cosine: lr (1 + cos(pi (e - w) / E)) / 2 over all E epochs (CoOp's); warmup_cosine: over
// the E - w epochs after the warmup (Menghini et al.'s WarmupCosineSchedule).
enum class Scheduler { Cosine, WarmupCosine, Constant };
enum class Warmup { Constant, Linear, None };
inline const std::vector<std::pair<Optimizer, std::string>>& enum_names(Optimizer) {
  static const std::vector<std::pair<Optimizer, std::string>> n{
      {Optimizer::Sgd, "sgd"}, {Optimizer::Adam, "adam"}, {Optimizer::AdamW, "adamw"}};
  return n;
}
inline const std::vector<std::pair<Scheduler, std::string>>& enum_names(Scheduler) {
  static const std::vector<std::pair<Scheduler, std::string>> n{
      {Scheduler::Cosine, "cosine"}, {Scheduler::WarmupCosine, "warmup_cosine"}, {Scheduler::Constant, "constant"}};
  return n;
}
inline const std::vector<std::pair<Warmup, std::string>>& enum_names(Warmup) {
  static const std::vector<std::pair<Warmup, std::string>> n{
      {Warmup::Constant, "constant"}, {Warmup::Linear, "linear"}, {Warmup::None, "none"}};
  return n;
}

struct ModelOptions {
  std::string checkpoint = "default";  // a checkpoint path, or "default" = the built-in model
  std::string device = "cpu";
  bool half = false;
  void bind(OptionSet& set);
};

struct TrainOptions {
  Optimizer optimizer = Optimizer::Sgd;
  double lr = 0.002;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int epochs = 0;                      // 0 = from epochs_by_shots
  std::string epochs_by_shots = "1:50,2:100,4:100,8:200,16:200";  // CoOp's table
  int batch_size = 32;
  Scheduler scheduler = Scheduler::Cosine;
  int warmup_epochs = 1;
  Warmup warmup = Warmup::Constant;
  double warmup_lr = 1e-5;
  double grad_clip = 0;                // max gradient norm, 0 = off
  bool autocast = false;               // CUDA only
  double scale_min = 0.08;             // RandomResizedCrop scale lower bound
  bool flip = true;
  bool augment = true;                 // false: train on CLIP's test view (no crops, no flips)
  int feature_views = 0;               // >0: opt-in cache of frozen features over this many
                                       // augmented views per image (changes augmentation semantics)
  Selection selection = Selection::Val;  // what searches may use: the validation split, or nothing
  void bind(OptionSet& set);
  int epochs_for(int shots, const std::string& dataset) const;
};

struct EvalOptions {
  std::string split = "test";
  int batch_size = 100;
  bool predictions = false;            // per-sample predictions as JSON lines
  bool confusion = true;
  // Test-time adaptation (methods that adapt per sample): the views of each test image.
  int views = 64;
  AugmixMode augmix = AugmixMode::Auto;
  double scale_min = 0.08;             // random resized crops' area lower bound
  std::string extra_views;
  // The stream a test-time method sees (stream_order.h): its order, the concentration of
  // a Dirichlet order, and how many orders (runs) are evaluated, each seeded by
  // (data.seed, run). Online methods start every run from the same state.
  StreamOrder order = StreamOrder::Shuffled;
  double dirichlet = 0.01;
  int runs = 1;
  // Dataset recipes to evaluate the learned state on once the run is done (cross-dataset
  // transfer, domain generalisation; transfer.h): each into <run>/transfer/<dataset>/.
  std::vector<std::string> transfer;
  void bind(OptionSet& set);
};

struct Recipe {
  std::string method = "zeroshot";
  std::string name;                    // recipe name used in run folders (default: last file stem)
  std::string output = "runs";         // root of run folders
  bool force = false;                  // rerun a finished run
  DataOptions data;
  ModelOptions model;
  TrainOptions train;
  EvalOptions eval;
  // Every key given for the method's section ("coop.n_ctx" -> "16"), as written.
  std::map<std::string, std::string> method_values;
  // The method's typed options: parsed once as the recipe is read (load_recipe); for a
  // recipe built in code (method and method_values set by hand), parsed on request.
  MethodOptions method_options() const;
  std::shared_ptr<const MethodOptions> parsed_method;

  // The resolved recipe as INI text: every known key of the core sections and of the method.
  std::string to_ini() const;
  // runs/<dataset>/<method>/<name>_<K>shot/seed<S>
  std::string run_dir() const;
};

// Limits of one load_recipe (docs/RELIABILITY.md): a recipe file's size (the shipped ones
// are under 4 KB), and the files read in all, includes counted each time they are read. An
// include may name any path (recipes/protocols/ include ../datasets/); cycles are refused,
// and the count stops a diamond of includes (a includes b twice, b includes c twice, ...)
// from reading 2^depth files.
constexpr uint64_t kMaxRecipeBytes = uint64_t(1) << 20;
constexpr int kMaxRecipeFiles = 256;

// Reads and composes recipe files, then applies "key=value" overrides. Unknown keys,
// unknown methods and unparsable values throw vlmadapt::Error naming the file and key.
Recipe load_recipe(const std::vector<std::string>& files, const std::vector<std::string>& overrides = {});
// The same from INI text (tests); `where` names it in errors.
Recipe parse_recipe_text(const std::string& text, const std::string& where, Recipe base = {});
// "section.key" -> value of every option in INI text, read as recipe files are.
std::map<std::string, std::string> ini_values(const std::string& text, const std::string& where);

}  // namespace vlmadapt
