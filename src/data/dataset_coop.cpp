// The CoOp benchmark datasets read from CoOp's split_zhou_<Name>.json files
// ({"train"|"val"|"test": [[relpath, label, classname], ...]}), following
// KaiyangZhou/CoOp datasets/*.py:
//  - folder layout: <root>/<dataset_dir>/<image_dir> for images and
//    <root>/<dataset_dir>/split_zhou_<Name>.json, with root = CoOp's DATASET.ROOT;
//  - class names from the third column, per label. CoOp keeps the '_' there and its
//    PromptLearner replaces it with ' ' before tokenising; we do that here, once;
//  - EuroSAT and Caltech101 rename raw folder names (NEW_CNAMES) and Caltech101 drops
//    BACKGROUND_Google and Faces_easy (IGNORED). CoOp applies these while *creating* a split,
//    so its released files already carry the new names; we apply them again so a split
//    made from the raw folders reads the same;
//  - FGVCAircraft has no split_zhou file in CoOp: it reads variants.txt and
//    images_variant_{train,val,test}.txt, as we do when no split file is given.
// Templates are CLIP's for the dataset, from the built-in datasets_prompts.json.
#include <vlmadapt/data/dataset.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

#include "dataset_readers.h"

namespace vlmadapt::detail {

std::function<Image(const std::string&)> file_loader(const std::string& root);
std::vector<std::string> read_lines(const std::string& path);

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct CoopInfo {
  const char* name;         // our dataset name
  const char* prompts_key;  // key of datasets_prompts.json
  const char* dataset_dir;  // CoOp's dataset_dir under DATASET.ROOT
  const char* image_dir;    // CoOp's image_dir under dataset_dir ("" = dataset_dir itself)
  const char* split_name;   // CoOp's split file name
};

const CoopInfo kCoop[] = {
    {"oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json"},
    {"caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"},
    {"dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json"},
    {"eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json"},
    {"fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "split_zhou_FGVCAircraft.json"},
    {"flowers102", "Flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"},
    {"food101", "Food101", "food-101", "images", "split_zhou_Food101.json"},
    {"stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json"},
    {"sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"},
    {"ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"},
};

// CoOp's NEW_CNAMES (eurosat.py, caltech101.py) and Caltech101's IGNORED folders.
const std::map<std::string, std::string> kEuroSatNames = {
    {"AnnualCrop", "Annual Crop Land"}, {"Forest", "Forest"},
    {"HerbaceousVegetation", "Herbaceous Vegetation Land"}, {"Highway", "Highway or Road"},
    {"Industrial", "Industrial Buildings"}, {"Pasture", "Pasture Land"},
    {"PermanentCrop", "Permanent Crop Land"}, {"Residential", "Residential Buildings"},
    {"River", "River"}, {"SeaLake", "Sea or Lake"}};
const std::map<std::string, std::string> kCaltechNames = {
    {"airplanes", "airplane"}, {"Faces", "face"}, {"Leopards", "leopard"}, {"Motorbikes", "motorbike"}};
const char* const kCaltechIgnored[] = {"BACKGROUND_Google", "Faces_easy"};

const CoopInfo& find_info(const std::string& name) {
  for (const CoopInfo& i : kCoop)
    if (name == i.name) return i;
  throw Error("data.dataset: '" + name + "' is not a CoOp dataset");
}

// A class name as the prompt sees it: the dataset's renames, then '_' -> ' '.
std::string prompt_name(const CoopInfo& info, std::string raw) {
  const auto& renames = std::string(info.name) == "eurosat" ? kEuroSatNames : kCaltechNames;
  if (std::string(info.name) == "eurosat" || std::string(info.name) == "caltech101") {
    const auto it = renames.find(raw);
    if (it != renames.end()) raw = it->second;
  }
  std::replace(raw.begin(), raw.end(), '_', ' ');
  return raw;
}

bool ignored(const CoopInfo& info, const std::string& raw) {
  return std::string(info.name) == "caltech101" &&
         std::find(std::begin(kCaltechIgnored), std::end(kCaltechIgnored), raw) !=
             std::end(kCaltechIgnored);
}

struct RawItem {
  std::string ref;
  int64_t label;
};

// Reads one split's entries, filling label -> class name and checking they agree.
std::vector<RawItem> read_entries(const json& j, const char* split, const std::string& path,
                                  const CoopInfo& info, std::map<int64_t, std::string>& names) {
  if (!j.contains(split) || !j[split].is_array())
    throw Error(path + ": expected key \"" + split + "\" holding a list of [path, label, classname]");
  std::vector<RawItem> out;
  const json& arr = j[split];
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& e = arr[i];
    const std::string where = path + ": " + split + "[" + std::to_string(i) + "]";
    if (!e.is_array() || e.size() != 3 || !e[0].is_string() || !e[1].is_number_integer() ||
        !e[2].is_string())
      throw Error(where + ": expected [path, label, classname]");
    const std::string raw = e[2].get<std::string>();
    if (ignored(info, raw)) continue;
    const int64_t label = e[1].get<int64_t>();
    if (label < 0) throw Error(where + ": negative label");
    const std::string name = prompt_name(info, raw);
    const auto [it, added] = names.emplace(label, name);
    if (!added && it->second != name)
      throw Error(where + ": label " + std::to_string(label) + " is named '" + raw +
                  "' here but '" + it->second + "' elsewhere");
    out.push_back({e[0].get<std::string>(), label});
  }
  return out;
}

// Parses a split file into train/val/test and class names. Labels are renumbered over the
// sorted labels present, which keeps CoOp's labels as they are (they are 0..n-1) and
// closes the gaps left when ignored classes are dropped.
void read_zhou_split(const std::string& text, const std::string& path, const CoopInfo& info, Dataset& d) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw Error(path + ": expected a CoOp split object {\"train\", \"val\", \"test\"}");
  std::map<int64_t, std::string> names;
  std::vector<RawItem> raw[3];
  const char* const splits[3] = {"train", "val", "test"};
  for (int s = 0; s < 3; ++s) raw[s] = read_entries(j, splits[s], path, info, names);
  std::map<int64_t, int64_t> relabel;
  for (const auto& [label, name] : names) {
    relabel[label] = int64_t(d.classnames.size());
    d.classnames.push_back(name);
  }
  std::vector<Item>* dst[3] = {&d.train, &d.val, &d.test};
  for (int s = 0; s < 3; ++s)
    for (RawItem& r : raw[s]) dst[s]->push_back({std::move(r.ref), relabel[r.label]});
}

// CoOp fgvc_aircraft.py: class list from variants.txt, items "<id> <variant name>" per line.
void read_fgvc(const fs::path& dir, Dataset& d) {
  d.classnames = read_lines((dir / "variants.txt").string());
  std::map<std::string, int64_t> label_of;
  for (size_t i = 0; i < d.classnames.size(); ++i) label_of[d.classnames[i]] = int64_t(i);
  const std::pair<const char*, std::vector<Item>*> files[] = {
      {"images_variant_train.txt", &d.train},
      {"images_variant_val.txt", &d.val},
      {"images_variant_test.txt", &d.test}};
  for (const auto& [file, items] : files) {
    const std::string path = (dir / file).string();
    for (const std::string& line : read_lines(path)) {
      const auto space = line.find(' ');
      const auto it = space == std::string::npos ? label_of.end() : label_of.find(line.substr(space + 1));
      if (it == label_of.end())
        throw Error(path + ": line '" + line + "': expected \"<image id> <variant>\" with a "
                    "variant listed in " + (dir / "variants.txt").string());
      items->push_back({line.substr(0, space) + ".jpg", it->second});
    }
  }
}

// The split file: data.split_file, else CoOp's place for it under data.root.
std::string split_path(const DataOptions& o, const CoopInfo& info) {
  if (!o.split_file.empty()) return o.split_file;
  if (o.root.empty())
    throw Error("data.root: required for dataset=" + o.dataset + " (CoOp's DATASET.ROOT, holding " +
                info.dataset_dir + "/" + info.split_name + "), or give data.split_file");
  const fs::path in_dir = fs::path(o.root) / info.dataset_dir / info.split_name;
  if (is_file(in_dir)) return in_dir.string();
  const fs::path flat = fs::path(o.root) / info.split_name;
  if (is_file(flat)) return flat.string();
  return in_dir.string();  // read_file reports it missing
}

// Where refs resolve: <R>/<dataset_dir>/<image_dir>, else <R>/<image_dir>, else R itself,
// with R = data.root or, without one, the split file's folder (CoOp keeps the split there).
std::string image_root(const DataOptions& o, const CoopInfo& info, const std::string& split) {
  const fs::path r = o.root.empty() ? fs::path(split).parent_path() : fs::path(o.root);
  std::vector<fs::path> candidates = {r / info.dataset_dir};  // Stanford Cars: no image_dir
  if (*info.image_dir) candidates = {r / info.dataset_dir / info.image_dir, r / info.image_dir};
  for (const fs::path& c : candidates)
    if (is_dir(c)) return c.lexically_normal().string();
  return r.string();
}

}  // namespace

void parse_coop_split(const std::string& text, const std::string& path, const std::string& dataset, Dataset& d) {
  read_zhou_split(text, path, find_info(dataset), d);
}

Dataset open_coop(const DataOptions& o) {
  const CoopInfo& info = find_info(o.dataset);
  Dataset d;
  d.name = info.name;
  const bool fgvc = d.name == "fgvc_aircraft";
  const std::string split = split_path(o, info);
  if (fgvc && o.split_file.empty() && !is_file(split)) {
    if (o.root.empty()) throw Error("data.root: required for dataset=fgvc_aircraft");
    const fs::path dir = is_dir(fs::path(o.root) / info.dataset_dir)
                             ? fs::path(o.root) / info.dataset_dir : fs::path(o.root);
    read_fgvc(dir, d);
    d.root = (dir / "images").string();
  } else {
    read_zhou_split(read_file(split, kMaxSplitFileBytes, "a CoOp split file"), split, info, d);
    d.root = image_root(o, info, split);
  }
  d.templates = builtin_prompts(info.prompts_key).templates;
  d.load = file_loader(d.root);
  return d;
}

}  // namespace vlmadapt::detail
