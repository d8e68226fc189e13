// ImageNet and its test-only variants, read from folders.
//  - imagenet: <root>/{train,val}/<wnid>/<images> (or CoOp's <root>/imagenet/images/...).
//    As CoOp's imagenet.py: test = the val folder, and val = test too ("evaluate on the
//    val set"), so few-shot val is drawn from it. Labels follow the wnid list of the
//    classnames file ("n01440764 tench" lines, CoOp's classnames.txt), or the sorted train
//    folders when there is no file.
//  - imagenet_sketch: wnid folders of all 1000 classes.
//  - imagenet_a, imagenet_r: the wnid folders present (200) are the classes, in sorted
//    order (torchvision ImageFolder, as TPT and CoOp); parent_labels maps them to the
//    1000-class index through the classnames file.
//  - imagenet_v2: folders "0".."999"; the classes follow the *string* sort of the folder
//    names ("0", "1", "10", "100", ...) as ImageFolder in TPT; the name of a class is the
//    ImageNet name of int(folder), which is also its parent label.
// Class names: the classnames file's where it gives them, else the built-in 1000 names.
#include <vlmadapt/data/dataset.h>

#include <filesystem>
#include <map>
#include <sstream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

namespace vlmadapt::detail {

std::function<Image(const std::string&)> file_loader(const std::string& root);
std::vector<std::string> read_lines(const std::string& path);
std::vector<std::string> list_subdirs(const std::filesystem::path& dir);
std::vector<Item> scan_class_folders(const std::filesystem::path& dir, const std::string& prefix,
                                     const std::map<std::string, int64_t>& labels,
                                     const std::string& what_maps);

namespace fs = std::filesystem;

namespace {

// The 1000-class table: wnids in label order and their names.
struct ClassTable {
  std::vector<std::string> wnids;  // empty without a classnames file
  std::vector<std::string> names;  // 1000 names
  std::string source;              // for error messages
};

// CoOp's read_classnames: "<wnid> <name with spaces>" per line; a bare wnid takes the
// built-in name of its position.
ClassTable read_class_table(const std::string& path) {
  ClassTable t;
  t.source = path;
  const std::vector<std::string> builtin = builtin_prompts("ImageNet").classnames;
  for (const std::string& line : read_lines(path)) {
    const auto space = line.find(' ');
    t.wnids.push_back(line.substr(0, space));
    std::string name = space == std::string::npos ? "" : line.substr(space + 1);
    if (name.empty()) {
      if (t.wnids.size() > builtin.size())
        throw Error(path + ": line '" + line + "': expected \"<wnid> <class name>\"");
      name = builtin[t.wnids.size() - 1];
    }
    t.names.push_back(name);
  }
  if (t.wnids.empty()) throw Error(path + ": no classes (expected \"<wnid> <class name>\" lines)");
  return t;
}

// data.classnames_file, else the first classnames.txt found in the usual places.
std::string find_class_file(const DataOptions& o, const std::vector<fs::path>& places) {
  if (!o.classnames_file.empty()) return o.classnames_file;
  for (const fs::path& p : places)
    if (is_file(p / "classnames.txt")) return (p / "classnames.txt").string();
  return "";
}

ClassTable class_table(const DataOptions& o, const std::vector<fs::path>& places) {
  const std::string file = find_class_file(o, places);
  if (!file.empty()) return read_class_table(file);
  ClassTable t;
  t.names = builtin_prompts("ImageNet").classnames;
  t.source = "the built-in ImageNet class list";
  return t;
}

std::map<std::string, int64_t> index_of(const std::vector<std::string>& keys) {
  std::map<std::string, int64_t> m;
  for (size_t i = 0; i < keys.size(); ++i) m[keys[i]] = int64_t(i);
  return m;
}

// Without a classnames file the wnids are the sorted folders, which is ImageNet's own
// label order only when all 1000 are there.
void wnids_from_folders(ClassTable& t, const fs::path& dir) {
  if (!t.wnids.empty()) return;
  t.wnids = list_subdirs(dir);
  if (t.wnids.size() != t.names.size())
    throw Error(dir.string() + ": found " + std::to_string(t.wnids.size()) +
                " class folders; without data.classnames_file (\"<wnid> <name>\" lines) all " +
                std::to_string(t.names.size()) + " ImageNet classes are needed");
}

// The first existing folder among `candidates` (the CoOp layout first, then data.root).
fs::path pick_root(const DataOptions& o, const std::vector<fs::path>& candidates,
                   const std::string& expected) {
  if (o.root.empty()) throw Error("data.root: required for dataset=" + o.dataset + " (" + expected + ")");
  for (const fs::path& c : candidates)
    if (is_dir(c)) return c.lexically_normal();
  throw Error(o.root + ": no such folder (data.root of dataset=" + o.dataset + ", " + expected + ")");
}

Dataset base_dataset(const std::string& name, const fs::path& root) {
  Dataset d;
  d.name = name;
  d.root = root.string();
  d.templates = builtin_prompts("ImageNet").templates;
  d.load = file_loader(d.root);
  return d;
}

Dataset open_imagenet(const DataOptions& o) {
  const std::string expected = "dataset=imagenet expects <root>/{train,val}/<wnid>/<images>";
  if (o.root.empty()) throw Error("data.root: required (" + expected + ")");
  const fs::path r(o.root);
  fs::path root;
  for (const fs::path& c : {r, r / "images", r / "imagenet" / "images"})
    if (root.empty() && (is_dir(c / "train") || is_dir(c / "val"))) root = c.lexically_normal();
  if (root.empty()) throw Error(o.root + ": no train/ or val/ folder (data.root; " + expected + ")");
  ClassTable t = class_table(o, {root, r, r / "imagenet"});
  wnids_from_folders(t, is_dir(root / "train") ? root / "train" : root / "val");
  Dataset d = base_dataset("imagenet", root);
  d.classnames = t.names;
  const auto labels = index_of(t.wnids);
  if (is_dir(root / "train")) d.train = scan_class_folders(root / "train", "train/", labels, t.source);
  if (is_dir(root / "val")) d.test = scan_class_folders(root / "val", "val/", labels, t.source);
  d.val = d.test;
  return d;
}

Dataset open_sketch(const DataOptions& o) {
  const fs::path r(o.root);
  const fs::path root = pick_root(o, {r / "imagenet-sketch" / "images", r}, "<root>/<wnid>/<images>");
  ClassTable t = class_table(o, {root, r / "imagenet-sketch", r});
  wnids_from_folders(t, root);
  Dataset d = base_dataset(o.dataset, root);
  d.classnames = t.names;
  d.test = scan_class_folders(root, "", index_of(t.wnids), t.source);
  return d;
}

// ImageNet-A and -R: the wnid folders present are the classes.
Dataset open_subset(const DataOptions& o, const fs::path& coop_dir, const fs::path& coop_images) {
  const fs::path r(o.root);
  const fs::path root = pick_root(o, {r / coop_dir / coop_images, r}, "<root>/<wnid>/<images>");
  const ClassTable t = class_table(o, {root, r / coop_dir, r});
  if (t.wnids.empty())
    throw Error("data.classnames_file: dataset=" + o.dataset + " needs the ImageNet wnid list "
                "(\"<wnid> <name>\" lines, CoOp's classnames.txt) to map its classes to ImageNet's");
  const auto parent = index_of(t.wnids);
  Dataset d = base_dataset(o.dataset, root);
  std::map<std::string, int64_t> labels;
  for (const std::string& wnid : list_subdirs(root)) {
    const auto it = parent.find(wnid);
    if (it == parent.end())
      throw Error((root / wnid).string() + ": wnid '" + wnid + "' is not in " + t.source);
    labels[wnid] = int64_t(d.classnames.size());
    d.classnames.push_back(t.names[size_t(it->second)]);
    d.parent_labels.push_back(it->second);
  }
  d.test = scan_class_folders(root, "", labels, t.source);
  return d;
}

Dataset open_v2(const DataOptions& o) {
  const fs::path r(o.root);
  const fs::path root = pick_root(
      o, {r / "imagenetv2" / "imagenetv2-matched-frequency-format-val", r}, "<root>/<0..999>/<images>");
  const ClassTable t = class_table(o, {root, r / "imagenetv2", r});
  Dataset d = base_dataset(o.dataset, root);
  std::map<std::string, int64_t> labels;
  for (const std::string& folder : list_subdirs(root)) {  // string order, as ImageFolder
    size_t used = 0;
    int64_t index = -1;
    try {
      index = std::stoll(folder, &used);
    } catch (const std::exception&) {
    }
    if (used != folder.size() || index < 0 || index >= int64_t(t.names.size()))
      throw Error((root / folder).string() + ": expected class folders named 0.." +
                  std::to_string(t.names.size() - 1));
    labels[folder] = int64_t(d.classnames.size());
    d.classnames.push_back(t.names[size_t(index)]);
    d.parent_labels.push_back(index);
  }
  d.test = scan_class_folders(root, "", labels, "the folders 0..999");
  return d;
}

}  // namespace

Dataset open_imagenet_family(const DataOptions& o) {
  if (o.dataset == "imagenet") return open_imagenet(o);
  if (o.dataset == "imagenet_sketch") return open_sketch(o);
  if (o.dataset == "imagenet_a") return open_subset(o, "imagenet-adversarial", "imagenet-a");
  if (o.dataset == "imagenet_r") return open_subset(o, "imagenet-rendition", "imagenet-r");
  if (o.dataset == "imagenet_v2") return open_v2(o);
  throw Error("data.dataset: '" + o.dataset + "' is not an ImageNet dataset");
}

}  // namespace vlmadapt::detail
