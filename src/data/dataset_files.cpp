// Datasets read from plain files: a folder per class ("folder") and a "path,label" list
// ("list"), plus the folder-scanning helpers the ImageNet readers share.
#include <vlmadapt/data/dataset.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <sstream>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/data/image.h>

#include "dataset_readers.h"

namespace vlmadapt::detail {

namespace fs = std::filesystem;

namespace {

bool is_image_file(const fs::path& p) { return is_image_path(p.string()); }

bool hidden(const fs::path& p) { return p.filename().string().rfind('.', 0) == 0; }

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string underscores_to_spaces(std::string s) {
  std::replace(s.begin(), s.end(), '_', ' ');
  return s;
}

const std::vector<std::string> kSingleTemplate = {"a photo of a {}."};

std::vector<Item>& mutable_split(Dataset& d, const std::string& s) {
  return s == "train" ? d.train : s == "val" ? d.val : d.test;
}

}  // namespace

// Sorted (byte order, as Python's sorted() and ImageFolder) non-hidden subfolders.
std::vector<std::string> list_subdirs(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir.string() + ": no such folder");
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && !hidden(e.path())) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Sorted image files of one folder (by extension; other files such as README.txt are skipped).
std::vector<std::string> list_images(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (!e.is_directory() && !hidden(e.path()) && is_image_file(e.path()))
      out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Items of `dir`/<class>/<image>, refs "<prefix><class>/<image>", labels by folder name.
// A folder missing from `labels` is an error naming it and `what_maps` (the class source).
std::vector<Item> scan_class_folders(const fs::path& dir, const std::string& prefix,
                                     const std::map<std::string, int64_t>& labels,
                                     const std::string& what_maps) {
  std::vector<Item> items;
  for (const std::string& sub : list_subdirs(dir)) {
    const auto found = labels.find(sub);
    if (found == labels.end())
      throw Error((dir / sub).string() + ": class folder '" + sub + "' is not listed in " +
                  what_maps);
    for (const std::string& file : list_images(dir / sub))
      items.push_back({prefix + sub + "/" + file, found->second});
  }
  return items;
}

// Loads refs relative to `root` with decode_image, whose errors name the full path.
std::function<Image(const std::string&)> file_loader(const std::string& root) {
  return [root](const std::string& ref) { return decode_image((fs::path(root) / ref).string()); };
}

// Non-empty, trimmed lines of a text file (one class name per line, etc.).
std::vector<std::string> read_lines(const std::string& path) {
  std::istringstream in(read_file(path, kMaxLinesFileBytes, "a file of names, one a line"));
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    line = trim(line);
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

namespace {

std::vector<std::string> folder_classnames(const DataOptions& o,
                                           const std::vector<std::string>& folders) {
  if (o.classnames_file.empty()) {
    std::vector<std::string> names;
    for (const auto& f : folders) names.push_back(underscores_to_spaces(f));
    return names;
  }
  std::vector<std::string> names = read_lines(o.classnames_file);
  if (names.size() != folders.size())
    throw Error(o.classnames_file + ": expected " + std::to_string(folders.size()) +
                " class names (one per line, one per class folder), got " +
                std::to_string(names.size()));
  return names;
}

}  // namespace

// root/<class>/<images> (all in `test`), or root/{train,val,test}/<class>/<images>.
// Classes are the sorted folder names (of train/ when there is one), '_' read as ' '.
Dataset open_folder(const DataOptions& o) {
  if (o.root.empty()) throw Error("data.root: required for dataset=folder (root/<class>/<images>)");
  const fs::path root(o.root);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw Error(o.root + ": no such folder (data.root)");
  const bool split_layout = fs::is_directory(root / "train", ec) || fs::is_directory(root / "test", ec);
  const fs::path class_source =
      !split_layout ? root : fs::is_directory(root / "train", ec) ? root / "train" : root / "test";
  const std::vector<std::string> folders = list_subdirs(class_source);
  if (folders.empty()) throw Error(class_source.string() + ": no class folders found");
  std::map<std::string, int64_t> labels;
  for (size_t i = 0; i < folders.size(); ++i) labels[folders[i]] = int64_t(i);
  Dataset d;
  d.name = "folder";
  d.root = root.string();
  d.classnames = folder_classnames(o, folders);
  d.templates = kSingleTemplate;
  const std::string what = "the class folders of " + class_source.string();
  if (!split_layout) {
    d.test = scan_class_folders(root, "", labels, what);
  } else {
    for (const char* s : {"train", "val", "test"})
      if (fs::is_directory(root / s, ec))
        mutable_split(d, s) = scan_class_folders(root / s, std::string(s) + "/", labels, what);
  }
  d.load = file_loader(d.root);
  return d;
}

namespace {

// "path,label" or "path,label,split" (split = train | val | test, default test). Paths may
// hold commas: the label and split are taken from the right.
void parse_list_line(const std::string& line, const std::string& where, Dataset& d) {
  std::vector<std::string> fields;
  std::stringstream ss(line);
  for (std::string f; std::getline(ss, f, ',');) fields.push_back(trim(f));
  std::string split = "test";
  if (fields.size() >= 3 && (fields.back() == "train" || fields.back() == "val" || fields.back() == "test")) {
    split = fields.back();
    fields.pop_back();
  }
  if (fields.size() < 2) throw Error(where + ": expected \"path,label\" or \"path,label,split\"");
  int64_t label = -1;
  try {
    size_t used = 0;
    label = std::stoll(fields.back(), &used);
    if (used != fields.back().size()) label = -1;
  } catch (const std::exception&) {
  }
  if (label < 0 || label >= int64_t(d.classnames.size()))
    throw Error(where + ": label '" + fields.back() + "' is not an integer in 0.." +
                std::to_string(int64_t(d.classnames.size()) - 1));
  fields.pop_back();
  std::string path = fields[0];
  for (size_t i = 1; i < fields.size(); ++i) path += "," + fields[i];
  if (path.empty()) throw Error(where + ": empty image path");
  mutable_split(d, split).push_back({path, label});
}

}  // namespace

// data.split_file lists "path,label[,split]" lines (paths relative to data.root, default the
// list's folder; '#' starts a comment); data.classnames_file has one class name per line.
Dataset open_list(const DataOptions& o) {
  if (o.split_file.empty())
    throw Error("data.split_file: required for dataset=list (a file of \"path,label\" lines)");
  if (o.classnames_file.empty())
    throw Error("data.classnames_file: required for dataset=list (one class name per line)");
  Dataset d;
  d.name = "list";
  d.classnames = read_lines(o.classnames_file);
  if (d.classnames.empty()) throw Error(o.classnames_file + ": no class names");
  d.templates = kSingleTemplate;
  d.root = o.root.empty() ? fs::path(o.split_file).parent_path().string() : o.root;
  std::istringstream in(read_file(o.split_file, kMaxSplitFileBytes, "a list of images"));
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    parse_list_line(line, o.split_file + ":" + std::to_string(line_no), d);
  }
  d.load = file_loader(d.root);
  return d;
}

}  // namespace vlmadapt::detail

namespace vlmadapt {

namespace fs = std::filesystem;

namespace {
std::string folded(std::string s) {
  std::replace(s.begin(), s.end(), '_', ' ');
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}
}  // namespace

Dataset open_support_folder(const std::string& folder, const std::vector<std::string>& classnames) {
  const fs::path root(folder);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw Error("data.support: " + folder + ": no such folder (expected <folder>/<class>/<images>)");
  std::map<std::string, int64_t> by_name;
  for (size_t i = 0; i < classnames.size(); ++i) by_name.emplace(folded(classnames[i]), int64_t(i));
  std::map<std::string, int64_t> labels;
  for (const std::string& sub : detail::list_subdirs(root)) {
    const auto found = by_name.find(folded(sub));
    if (found == by_name.end()) {
      std::string known;
      for (size_t i = 0; i < classnames.size() && i < 20; ++i) known += (i ? ", " : "") + classnames[i];
      throw Error("data.support: " + (root / sub).string() + ": class folder '" + sub +
                  "' is not a class of the task (folder names are matched to class names with '_' "
                  "read as ' ', ignoring case; classes: " + known + (classnames.size() > 20 ? ", ..." : "") + ")");
    }
    labels[sub] = found->second;
  }
  Dataset d;
  d.name = "support";
  d.root = root.string();
  d.classnames = classnames;
  d.train = detail::scan_class_folders(root, "", labels, "the task's classes");
  if (d.train.empty()) throw Error("data.support: " + folder + ": no images in its class folders");
  d.load = detail::file_loader(d.root);
  return d;
}

Dataset open_image_folder(const std::string& folder, const std::string& key) {
  const fs::path root(folder);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw Error(key + ": " + folder + ": no such folder");
  Dataset d;
  d.name = "images";
  d.root = root.string();
  d.classnames = {"image"};
  for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied);
       it != fs::recursive_directory_iterator(); ++it)
    if (it->is_regular_file(ec) && is_image_path(it->path().string()))
      d.test.push_back({fs::relative(it->path(), root).string(), 0});
  std::sort(d.test.begin(), d.test.end(), [](const Item& a, const Item& b) { return a.ref < b.ref; });
  if (d.test.empty()) throw Error(key + ": " + folder + ": no images found");
  d.load = detail::file_loader(d.root);
  return d;
}

}  // namespace vlmadapt
