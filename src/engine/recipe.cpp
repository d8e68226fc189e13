// Recipes: option tables of the core sections, INI loading and composition, and the
// resolved recipe back as INI.
//
// Loading keeps every method section's values while files compose (a dataset recipe may
// carry [coop] and [zeroshot] settings, and the method may be chosen by a later file or
// by --set), and only at the end keeps those of the chosen method.
#include <vlmadapt/engine/recipe.h>

#include <boost/program_options/options_description.hpp>
#include <boost/program_options/parsers.hpp>

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <sstream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/adapt/method.h>

namespace vlmadapt {

void ModelOptions::bind(OptionSet& set) {
  set.add("checkpoint", checkpoint, "CLIP checkpoint path, or 'default' for the built-in model")
      .add("device", device, "torch device: cpu, cuda, cuda:1, ...")
      .add("half", half, "run the frozen towers in float16 (CUDA)");
}

void TrainOptions::bind(OptionSet& set) {
  set.add("optimizer", optimizer, "optimizer")
      .add("lr", lr, "peak learning rate").at_least(0)
      .add("momentum", momentum, "SGD momentum").range(0, 1)
      .add("weight_decay", weight_decay, "weight decay").at_least(0)
      .add("adam_beta1", adam_beta1, "Adam beta1").range(0, 0.999999)
      .add("adam_beta2", adam_beta2, "Adam beta2").range(0, 0.999999)
      .add("adam_eps", adam_eps, "Adam epsilon").above(0)
      .add("epochs", epochs, "epochs; 0 = from epochs_by_shots").at_least(0)
      .add("epochs_by_shots", epochs_by_shots,
           "epochs per shot count, 'shots:epochs,...' (unlisted: nearest listed below)")
      .add("batch_size", batch_size, "training batch size").at_least(1)
      .add("scheduler", scheduler, "learning-rate schedule after warmup")
      .add("warmup_epochs", warmup_epochs, "warmup epochs (0 = none)").at_least(0)
      .add("warmup", warmup, "warmup kind")
      .add("warmup_lr", warmup_lr, "learning rate of constant warmup / start of linear warmup").at_least(0)
      .add("grad_clip", grad_clip, "max gradient norm; 0 = off").at_least(0)
      .add("autocast", autocast, "mixed precision (CUDA only)")
      .add("scale_min", scale_min, "RandomResizedCrop scale lower bound").range(0, 1)
      .add("flip", flip, "random horizontal flips")
      .add("augment", augment, "augment training images (random resized crops, flips); false = CLIP's test view")
      .add("feature_views", feature_views,
           ">0: cache frozen features of this many augmented views per image").at_least(0)
      .add("selection", selection,
           "how methods choose hyper-parameters and epochs: val = on the validation split only; none = their "
           "paper's fixed values or a validation-free rule (the test split is never used)");
}

void EvalOptions::bind(OptionSet& set) {
  set.add("split", split, "split to evaluate", {"train", "val", "test"})
      .add("batch_size", batch_size, "evaluation batch size").at_least(1)
      .add("predictions", predictions, "write per-sample predictions as JSON lines")
      .add("confusion", confusion, "write the confusion matrix")
      .add("views", views, "test-time adaptation: views per test image (the test view + augmented ones)").at_least(1)
      .add("augmix", augmix, "test-time views: AugMix on the crops (auto = off for the ImageNet family)")
      .add("scale_min", scale_min, "test-time views: lower bound of the random resized crops' area (TPT 0.08, DMN 0.5)")
      .range(0.01, 1)
      .add("extra_views", extra_views, "test-time views: folder of extra views named <image>_<i>.<ext>")
      .add("order", order, "test stream order: shuffled (seeded), by_class (classes in runs) or dirichlet (StatA)")
      .add("dirichlet", dirichlet, "concentration of the dirichlet order (StatA: 0.1 low, 0.01 medium, 0.001 high correlation)")
      .above(0)
      .add("runs", runs, "stream orders evaluated (mean, std and the mean of the worst 10% are reported)")
      .range(1, 10000)
      .add("transfer", transfer,
           "dataset recipes ('|'-separated, paths from the working folder) the finished run is also evaluated on: "
           "cross-dataset transfer and domain generalisation, into <run>/transfer/<dataset>/");
}

namespace {

const char* const kTableKey = "train.epochs_by_shots";

// "1:50,2:100" -> {1:50, 2:100}; throws Error naming train.epochs_by_shots.
std::map<int, int> parse_epochs_table(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return Error(std::string(kTableKey) + ": " + why + " in '" + text +
                 "' (expected shots:epochs pairs like '1:50,2:100')");
  };
  std::map<int, int> table;
  std::stringstream in(text);
  for (std::string pair; std::getline(in, pair, ',');) {
    const auto colon = pair.find(':');
    if (colon == std::string::npos) throw bad("no ':' in '" + pair + "'");
    OptionSet check(kTableKey);  // reuses the integer parsing and its messages
    int shots = 0, epochs = 0;
    check.add("shots", shots, "").add("epochs", epochs, "");
    try {
      check.set(check.entries()[0].key, pair.substr(0, colon));
      check.set(check.entries()[1].key, pair.substr(colon + 1));
    } catch (const Error&) {
      throw bad("'" + pair + "' is not two integers");
    }
    if (shots < 0 || epochs <= 0) throw bad("'" + pair + "' needs shots >= 0 and epochs > 0");
    if (!table.emplace(shots, epochs).second) throw bad("shots " + std::to_string(shots) + " twice");
  }
  if (table.empty()) throw bad("no entries");
  return table;
}

// The option tables of one recipe. They bind to its fields, so they are built for a
// recipe at a fixed address and never outlive it.
struct Tables {
  OptionSet top{""}, data{"data"}, model{"model"}, train{"train"}, eval{"eval"};

  explicit Tables(Recipe& r) {
    top.add("method", r.method, "the method (vlmadapt methods lists them)")
        .add("name", r.name, "recipe name used in run folders (default: last file's stem)")
        .add("output", r.output, "root folder of runs")
        .add("force", r.force, "rerun a finished run");
    r.data.bind(data);
    r.model.bind(model);
    r.train.bind(train);
    r.eval.bind(eval);
  }
  std::vector<const OptionSet*> all() const { return {&top, &data, &model, &train, &eval}; }
  const OptionSet* section(const std::string& name) const {
    for (const OptionSet* s : all())
      if (s->section() == name) return s;
    return nullptr;
  }
};

std::string section_of(const std::string& key) {
  const auto dot = key.find('.');
  return dot == std::string::npos ? "" : key.substr(0, dot);
}

bool is_method(const std::string& name) {
  const auto names = method_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::vector<std::string> keys_of(const OptionSet& set) {
  std::vector<std::string> keys;
  for (const auto& e : set.entries()) keys.push_back(e.key);
  return keys;
}

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

// Runs `f`; a vlmadapt::Error from it is rethrown with `where: ` in front.
template <class F>
void located(const std::string& where, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
}

class Loader {
 public:
  explicit Loader(Recipe base) : recipe_(std::move(base)) {
    for (const auto& [key, value] : recipe_.method_values) apply_method_value(section_of(key), key, value, "recipe");
  }

  void apply(const std::string& key, const std::string& value, const std::string& where);
  void apply_text(const std::string& text, const std::string& where);
  void apply_file(const std::string& path, const std::string& included_from);
  bool name_set() const { return name_set_; }
  Recipe& recipe() { return recipe_; }
  Recipe finish();

 private:
  [[noreturn]] void unknown(const std::string& key, const Tables& tables) const;
  void apply_method_value(const std::string& method, const std::string& key, const std::string& value,
                          const std::string& where);
  Recipe recipe_;
  std::map<std::string, std::string> method_values_;  // every method section seen, as written
  std::map<std::string, MethodOptions> methods_;      // and parsed, once, into each method's options
  std::vector<std::string> reading_;                  // files being read, to catch include cycles
  int files_read_ = 0;                                // in all, against kMaxRecipeFiles
  bool name_set_ = false;
};

// Keys that name folders of the run folder (run_dir) must stay inside the output folder.
void check_folder_name(const std::string& key, const std::string& value) {
  if (value.empty() || value == "." || value == ".." || value.find_first_of(std::string("/\\\0", 3)) != std::string::npos)
    throw Error(key + ": '" + value + "' cannot name a folder inside the output folder (expected a plain name: no '/', "
                "no '..', not empty)");
}

void Loader::apply(const std::string& key, const std::string& value, const std::string& where) {
  Tables tables(recipe_);
  const std::string section = section_of(key);
  if (const OptionSet* set = tables.section(section); set && set->find(key)) {
    located(where, [&] {
      set->set(key, value);
      if (key == "method") find_method(recipe_.method);  // names the known methods
      if (key == kTableKey) parse_epochs_table(recipe_.train.epochs_by_shots);
      if (key == "name" || key == "data.dataset") check_folder_name(key, value);
    });
    if (key == "name") name_set_ = true;
    return;
  }
  if (!section.empty() && !tables.section(section) && is_method(section) && method_options(section).set().find(key))
    return apply_method_value(section, key, value, where);
  located(where, [&] { unknown(key, tables); });
}

void Loader::apply_method_value(const std::string& method, const std::string& key, const std::string& value,
                                const std::string& where) {
  auto it = methods_.find(method);
  if (it == methods_.end()) it = methods_.emplace(method, MethodOptions(method)).first;
  located(where, [&] { it->second.apply(key, value); });
  method_values_[key] = value;
}

// Suggests from the key's own section when that section exists, else from every key.
void Loader::unknown(const std::string& key, const Tables& tables) const {
  const std::string section = section_of(key);
  std::vector<std::string> known;
  if (const OptionSet* set = tables.section(section); set && !section.empty()) {
    known = keys_of(*set);
  } else if (!section.empty() && is_method(section)) {
    known = keys_of(method_options(section).set());
  } else {
    for (const OptionSet* set : tables.all())
      for (const auto& k : keys_of(*set)) known.push_back(k);
    for (const auto& name : method_names())
      for (const auto& k : keys_of(method_options(name).set())) known.push_back(k);
  }
  std::string message = "unknown key '" + key + "'";
  const std::string near = nearest_key(key, known);
  if (!near.empty()) message += "; did you mean '" + near + "'?";
  throw Error(message);
}

// Includes are read first, so the including file's own keys win over them.
void Loader::apply_text(const std::string& text, const std::string& where) {
  namespace po = boost::program_options;
  std::istringstream in(text);
  po::parsed_options parsed(nullptr);
  try {
    parsed = po::parse_config_file(in, po::options_description(), /*allow_unregistered=*/true);
  } catch (const po::error& e) {
    throw Error(where + ": " + e.what());
  }
  const auto base = std::filesystem::path(where).parent_path();
  for (const auto& option : parsed.options) {
    if (option.string_key != "include") continue;
    std::stringstream list(option.value.at(0));  // several files: "a.ini|b.ini"
    for (std::string item; std::getline(list, item, '|');) {
      const std::filesystem::path file(trim(item));
      if (!file.empty()) apply_file((file.is_absolute() ? file : base / file).string(), where);
    }
  }
  for (const auto& option : parsed.options)
    if (option.string_key != "include") apply(option.string_key, option.value.at(0), where);
}

void Loader::apply_file(const std::string& path, const std::string& included_from) {
  const std::string id = std::filesystem::weakly_canonical(path).string();
  if (std::find(reading_.begin(), reading_.end(), id) != reading_.end()) {
    std::string chain;
    for (const auto& file : reading_) chain += file + " -> ";
    throw Error(included_from + ": include cycle: " + chain + id);
  }
  if (++files_read_ > kMaxRecipeFiles)
    throw Error((included_from.empty() ? path : included_from + ": include " + path) + ": more than the limit of " +
                std::to_string(kMaxRecipeFiles) + " recipe files read for one recipe (an include counts each time)");
  std::string text;
  const auto read = [&] { text = read_file(path, kMaxRecipeBytes, "a recipe file"); };  // names the file
  if (included_from.empty()) {
    read();
  } else {
    located(included_from, read);
  }
  reading_.push_back(id);
  apply_text(text, path);
  reading_.pop_back();
}

Recipe Loader::finish() {
  Recipe out = recipe_;
  out.method_values.clear();
  const std::string prefix = out.method + ".";
  for (const auto& [key, value] : method_values_)
    if (key.compare(0, prefix.size(), prefix) == 0) out.method_values[key] = value;
  auto it = methods_.find(out.method);
  out.parsed_method = std::make_shared<const MethodOptions>(it != methods_.end() ? it->second : MethodOptions(out.method));
  return out;
}

void write_section(std::ostream& out, const OptionSet& set) {
  if (!set.section().empty()) out << "\n[" << set.section() << "]\n";
  const size_t skip = set.section().empty() ? 0 : set.section().size() + 1;
  for (const auto& e : set.entries()) out << e.key.substr(skip) << " = " << e.get() << "\n";
}

}  // namespace

int TrainOptions::epochs_for(int shots, const std::string& dataset) const {
  if (epochs > 0) return epochs;
  std::map<int, int> table;
  try {
    table = parse_epochs_table(epochs_by_shots);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (dataset " + dataset + ")");
  }
  auto above = table.upper_bound(shots);  // first entry with more shots
  return above == table.begin() ? above->second : std::prev(above)->second;
}

std::map<std::string, std::string> ini_values(const std::string& text, const std::string& where) {
  namespace po = boost::program_options;
  std::istringstream in(text);
  std::map<std::string, std::string> out;
  try {
    for (const auto& option : po::parse_config_file(in, po::options_description(), true).options)
      out[option.string_key] = option.value.empty() ? "" : option.value.front();
  } catch (const po::error& e) {
    throw Error(where + ": " + e.what());
  }
  return out;
}

std::string Recipe::to_ini() const {
  Recipe copy = *this;  // the tables bind to fields; to_ini is const
  Tables tables(copy);
  const MethodOptions options = method_options();
  std::ostringstream out;
  out << "# vlmadapt recipe, resolved: every key of the core sections and of the method.\n";
  for (const OptionSet* set : tables.all()) write_section(out, *set);
  write_section(out, options.set());
  return out.str();
}

MethodOptions Recipe::method_options() const {
  if (parsed_method && parsed_method->method() == method) return *parsed_method;
  MethodOptions options(method);
  // The pair is named, not bound: a lambda cannot capture a structured binding in C++17
  // (clang 14, which builds the fuzzers, refuses it).
  for (const auto& entry : method_values) located("recipe", [&] { options.apply(entry.first, entry.second); });
  return options;
}

std::string Recipe::run_dir() const {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(output) / data.dataset / method /
                       (name + "_" + std::to_string(data.shots) + "shot") /
                       ("seed" + std::to_string(data.seed));
  return dir.string();
}

Recipe load_recipe(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  Loader loader{Recipe{}};
  for (const auto& file : files) loader.apply_file(file, "");
  if (!loader.name_set() && !files.empty())
    loader.recipe().name = std::filesystem::path(files.back()).stem().string();
  for (const auto& item : overrides) {
    const auto eq = item.find('=');
    if (eq == std::string::npos) throw Error("--set: expected key=value, got '" + item + "'");
    loader.apply(trim(item.substr(0, eq)), trim(item.substr(eq + 1)), "--set");
  }
  // Without files or a name there is still a run folder to name.
  if (loader.recipe().name.empty()) loader.recipe().name = loader.recipe().method;
  return loader.finish();
}

Recipe parse_recipe_text(const std::string& text, const std::string& where, Recipe base) {
  Loader loader(std::move(base));
  loader.apply_text(text, where);
  return loader.finish();
}

}  // namespace vlmadapt
