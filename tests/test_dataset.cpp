// Datasets and the CoOp few-shot protocol: the real Fashion-MNIST IDX files, CoOp's real
// split files (no images), and small ImageNet/folder/list trees made in temp folders.
#include "test_util.h"
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/options.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <zlib.h>

#include <fstream>
#include <set>

namespace vt = vlmadapt::testing;
namespace fs = std::filesystem;
using vlmadapt::DataOptions;
using vlmadapt::Dataset;
using vlmadapt::Error;
using vlmadapt::Item;

namespace {

const fs::path kSplits = "/work/shared/data/splits";

DataOptions options(const std::string& name, const std::string& root = "") {
  DataOptions o;
  o.dataset = name;
  o.root = root;
  return o;
}

using vlmadapt::testing::error_of;

#define EXPECT_ERROR_HAS(stmt, text) \
  EXPECT_NE(error_of([&] { stmt; }).find(text), std::string::npos) << error_of([&] { stmt; })

const Dataset& fashion() {
  static const Dataset d = vlmadapt::open_dataset(options("fashion_mnist"));
  return d;
}

std::map<int64_t, int> per_class(const std::vector<Item>& items) {
  std::map<int64_t, int> n;
  for (const Item& it : items) ++n[it.label];
  return n;
}

std::vector<std::string> refs(const std::vector<Item>& items) {
  std::vector<std::string> out;
  for (const Item& it : items) out.push_back(it.ref);
  return out;
}

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

void write_gz(const fs::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, bytes.data(), unsigned(bytes.size()));
  gzclose(f);
}

std::string be32(uint32_t v) {
  return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

void write_png(const fs::path& p, int value = 128) {
  fs::create_directories(p.parent_path());
  cv::imwrite(p.string(), cv::Mat(12, 10, CV_8UC3, cv::Scalar(value, 60, 200)));
}

std::string read_file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(std::ifstream(p)); }

}  // namespace

// ---- Fashion-MNIST ----------------------------------------------------------

TEST(FashionMnist, ReadsTheRealIdxFiles) {
  const Dataset& d = fashion();
  EXPECT_EQ(d.train.size(), 60000u);
  EXPECT_EQ(d.test.size(), 10000u);
  EXPECT_TRUE(d.val.empty());
  ASSERT_EQ(d.classnames.size(), 10u);
  EXPECT_EQ(d.classnames[0], "T-shirt/top");
  EXPECT_EQ(d.classnames[9], "Ankle boot");
  EXPECT_EQ(d.templates.at(0), "a photo of a {}.");
  for (const auto& [label, n] : per_class(d.train)) EXPECT_EQ(n, 6000) << label;
  for (const auto& [label, n] : per_class(d.test)) EXPECT_EQ(n, 1000) << label;
  EXPECT_EQ(per_class(d.train).size(), 10u);
  EXPECT_EQ(d.train[0].ref, "train/0");
  EXPECT_EQ(d.test[9999].ref, "test/9999");
}

TEST(FashionMnist, KnownImagesHaveStablePixelSums) {
  const Dataset copy = fashion();  // copies share the decoded pixels
  const std::pair<std::string, double> known[] = {
      {"train/0", 76247}, {"train/1", 84598}, {"train/59999", 16684}, {"test/0", 33456}, {"test/9999", 24390}};
  for (const auto& [ref, sum] : known) {
    const vlmadapt::Image im = copy.load(ref);
    EXPECT_EQ(im.mode, vlmadapt::PixelMode::L);
    ASSERT_EQ(im.pixels.type(), CV_8UC1);
    EXPECT_EQ(im.pixels.size(), cv::Size(28, 28));
    EXPECT_EQ(cv::sum(im.pixels)[0], sum) << ref;
  }
  EXPECT_EQ(copy.train[0].label, 9);
  EXPECT_EQ(copy.train[1].label, 0);
  EXPECT_ERROR_HAS(copy.load("train/60000"), "train/60000");
  EXPECT_ERROR_HAS(copy.load("val/3"), "val/3");
}

TEST(FashionMnist, CorruptOrMissingFilesNameTheFile) {
  const fs::path dir = vt::temp_dir("fmnist_bad");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("fashion_mnist", dir)), "train-images-idx3-ubyte.gz");
  // Three 28x28 training images, one of them missing from the file.
  const std::string labels = be32(0x801) + be32(3) + std::string("\x01\x02\x09", 3);
  const std::string header = be32(0x803) + be32(3) + be32(28) + be32(28);
  write_gz(dir / "train-labels-idx1-ubyte.gz", labels);
  write_gz(dir / "train-images-idx3-ubyte.gz", header + std::string(2 * 784, '\x07'));
  write_gz(dir / "t10k-labels-idx1-ubyte.gz", be32(0x801) + be32(1) + std::string(1, '\0'));
  write_gz(dir / "t10k-images-idx3-ubyte.gz", be32(0x803) + be32(1) + be32(28) + be32(28) + std::string(784, '\x05'));
  const Dataset d = vlmadapt::open_dataset(options("fashion_mnist", dir));
  EXPECT_EQ(d.train.size(), 3u);
  EXPECT_EQ(d.train[2].label, 9);
  EXPECT_EQ(cv::sum(d.load("test/0").pixels)[0], 5 * 784);
  EXPECT_ERROR_HAS(d.load("train/0"), (dir / "train-images-idx3-ubyte.gz").string());
  // Wrong magic, a label out of range, a truncated gzip stream: all name the labels file.
  const std::string lab = (dir / "train-labels-idx1-ubyte.gz").string();
  write_gz(lab, header);
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("fashion_mnist", dir)), lab);
  write_gz(lab, be32(0x801) + be32(1) + std::string(1, '\x0a'));
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("fashion_mnist", dir)), "out of range");
  const std::string real = read_file_bytes("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
  write_text(lab, real.substr(0, real.size() / 2));
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("fashion_mnist", dir)), lab);
  write_text(lab, "not gzip at all");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("fashion_mnist", dir)), lab);
}

// ---- few-shot sampling --------------------------------------------------------

TEST(FewShot, CountsPerClassAndValDisjointFromTrain) {
  const Dataset d = vlmadapt::sample_few_shot(fashion(), 16, -1, 1);
  EXPECT_EQ(d.train.size(), 160u);
  EXPECT_EQ(d.val.size(), 40u);  // min(16, 4) per class from the rest of train
  EXPECT_EQ(d.test.size(), 10000u);
  for (const auto& [label, n] : per_class(d.train)) EXPECT_EQ(n, 16);
  for (const auto& [label, n] : per_class(d.val)) EXPECT_EQ(n, 4);
  const auto train = refs(d.train), val = refs(d.val);
  std::set<std::string> seen(train.begin(), train.end());
  EXPECT_EQ(seen.size(), 160u);  // without replacement
  for (const auto& r : val) EXPECT_FALSE(seen.count(r)) << r;
  for (const Item& it : d.train)  // labels travel with their refs
    EXPECT_EQ(it.label, fashion().train[std::stoul(it.ref.substr(6))].label);
  EXPECT_EQ(vlmadapt::sample_few_shot(fashion(), 2, 8, 1).val.size(), 80u);
  EXPECT_EQ(vlmadapt::sample_few_shot(fashion(), 1, -1, 1).val.size(), 10u);
}

TEST(FewShot, DeterministicPerSeedAndSeedsDiffer) {
  const auto a = refs(vlmadapt::sample_few_shot(fashion(), 4, -1, 1).train);
  EXPECT_EQ(a, refs(vlmadapt::sample_few_shot(fashion(), 4, -1, 1).train));
  EXPECT_NE(a, refs(vlmadapt::sample_few_shot(fashion(), 4, -1, 2).train));
  EXPECT_NE(refs(vlmadapt::sample_few_shot(fashion(), 4, -1, 1).val),
            refs(vlmadapt::sample_few_shot(fashion(), 4, -1, 3).val));
  // A fixed draw: std::mt19937_64 is specified by the standard and the bounded draws are
  // ours, so this must hold on every platform (checked against an independent Python
  // MT19937-64 + rejection-sampling re-implementation of the draw).
  const std::vector<std::string> golden = {"train/55425", "train/30733", "train/965", "train/36322"};
  EXPECT_EQ(std::vector<std::string>(a.begin(), a.begin() + 4), golden);
}

TEST(FewShot, SmallClassesAndZeroShots) {
  Dataset d;
  for (int i = 0; i < 3; ++i) d.train.push_back({"a" + std::to_string(i), 0});
  for (int i = 0; i < 9; ++i) d.train.push_back({"b" + std::to_string(i), 1});
  for (int i = 0; i < 5; ++i) d.val.push_back({"v" + std::to_string(i), i % 2});
  d.classnames = {"a", "b"};
  const Dataset s = vlmadapt::sample_few_shot(d, 4, -1, 7);
  EXPECT_EQ(per_class(s.train), (std::map<int64_t, int>{{0, 3}, {1, 4}}));  // all of class 0
  EXPECT_EQ(per_class(s.val), (std::map<int64_t, int>{{0, 3}, {1, 2}}));
  const Dataset all = vlmadapt::sample_few_shot(d, 0, -1, 7);
  EXPECT_EQ(refs(all.train), refs(d.train));
  EXPECT_EQ(refs(all.val), refs(d.val));
  EXPECT_ERROR_HAS(vlmadapt::sample_few_shot(d, -1, -1, 7), "data.shots");
}

// ---- base-to-new ---------------------------------------------------------------

TEST(Subsample, BaseAndNewRelabelFromZero) {
  const Dataset base = vlmadapt::subsample_classes(fashion(), "base");
  const Dataset novel = vlmadapt::subsample_classes(fashion(), "new");
  EXPECT_EQ(base.classnames, (std::vector<std::string>{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"}));
  EXPECT_EQ(novel.classnames, (std::vector<std::string>{"Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}));
  EXPECT_EQ(base.train.size(), 30000u);
  EXPECT_EQ(novel.test.size(), 5000u);
  EXPECT_EQ(per_class(novel.train).begin()->first, 0);
  EXPECT_EQ(per_class(novel.train).rbegin()->first, 4);
  EXPECT_EQ(novel.train[0].ref, "train/0");  // an ankle boot: label 9 -> 4
  EXPECT_EQ(novel.train[0].label, 4);
  EXPECT_EQ(vlmadapt::subsample_classes(fashion(), "all").classnames.size(), 10u);
  EXPECT_ERROR_HAS(vlmadapt::subsample_classes(fashion(), "half"), "data.classes");
  // Odd class counts: ceil(n/2) base classes.
  DataOptions o = options("oxford_pets");
  o.split_file = (kSplits / "split_zhou_OxfordPets.json").string();
  const Dataset pets = vlmadapt::open_dataset(o);
  EXPECT_EQ(vlmadapt::subsample_classes(pets, "base").classnames.size(), 19u);
  EXPECT_EQ(vlmadapt::subsample_classes(pets, "new").classnames.size(), 18u);
}

// ---- CoOp split files ------------------------------------------------------------

TEST(CoopSplits, RealSplitFilesMatchTheirJson) {
  struct Case { std::string name, file, key; size_t classes; std::string first, last; };
  const Case cases[] = {
      {"caltech101", "split_zhou_Caltech101.json", "Caltech101", 100, "face", "yin yang"},
      {"oxford_pets", "split_zhou_OxfordPets.json", "OxfordPets", 37, "abyssinian", "yorkshire terrier"},
      {"dtd", "split_zhou_DescribableTextures.json", "DescribableTextures", 47, "banded", "zigzagged"}};
  for (const Case& c : cases) {
    DataOptions o = options(c.name);
    o.split_file = (kSplits / c.file).string();
    const Dataset d = vlmadapt::open_dataset(o);
    const nlohmann::json j = read_json(kSplits / c.file);
    for (const char* s : {"train", "val", "test"}) {
      ASSERT_EQ(d.split(s).size(), j[s].size()) << c.name << " " << s;
      for (size_t i = 0; i < j[s].size(); i += 97) {
        EXPECT_EQ(d.split(s)[i].ref, j[s][i][0].get<std::string>());
        EXPECT_EQ(d.split(s)[i].label, j[s][i][1].get<int64_t>());
      }
    }
    EXPECT_EQ(d.classnames.size(), c.classes) << c.name;
    EXPECT_EQ(d.classnames.front(), c.first);
    EXPECT_EQ(d.classnames.back(), c.last);
    for (const auto& n : d.classnames) EXPECT_EQ(n.find('_'), std::string::npos) << n;
    EXPECT_EQ(d.templates, vlmadapt::builtin_prompts(c.key).templates);
    EXPECT_EQ(d.root, kSplits.string());  // no image folder there: refs resolve beside the split
  }
}

TEST(CoopSplits, MissingImageIsAnErrorNamingThePath) {
  const fs::path root = vt::temp_dir("coop_root");
  fs::create_directories(root / "caltech-101" / "101_ObjectCategories");
  fs::copy_file(kSplits / "split_zhou_Caltech101.json", root / "caltech-101" / "split_zhou_Caltech101.json");
  const Dataset d = vlmadapt::open_dataset(options("caltech101", root));  // CoOp's layout
  EXPECT_EQ(d.root, (root / "caltech-101" / "101_ObjectCategories").string());
  EXPECT_EQ(d.train.size(), 4128u);
  EXPECT_ERROR_HAS(d.load(d.train[0].ref), (root / "caltech-101/101_ObjectCategories/Faces/image_0274.jpg").string());
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("dtd", root)), "split_zhou_DescribableTextures.json");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("dtd")), "data.root");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("cifar10")), "unknown dataset 'cifar10'");
}

TEST(CoopSplits, RenamesIgnoredClassesAndBadFiles) {
  const fs::path dir = vt::temp_dir("coop_names");
  write_text(dir / "euro.json", R"({"train": [["AnnualCrop/a.jpg", 0, "AnnualCrop"], ["SeaLake/b.jpg", 1, "SeaLake"]],
      "val": [], "test": [["River/c.jpg", 2, "River"]]})");
  DataOptions o = options("eurosat");
  o.split_file = (dir / "euro.json").string();
  EXPECT_EQ(vlmadapt::open_dataset(o).classnames,
            (std::vector<std::string>{"Annual Crop Land", "Sea or Lake", "River"}));
  write_text(dir / "cal.json", R"({"train": [["BACKGROUND_Google/x.jpg", 0, "BACKGROUND_Google"],
      ["Faces/y.jpg", 1, "Faces"], ["Faces_easy/z.jpg", 2, "Faces_easy"], ["yin_yang/w.jpg", 3, "yin_yang"]],
      "val": [], "test": []})");
  o = options("caltech101");
  o.split_file = (dir / "cal.json").string();
  const Dataset cal = vlmadapt::open_dataset(o);
  EXPECT_EQ(cal.classnames, (std::vector<std::string>{"face", "yin yang"}));
  EXPECT_EQ(cal.train[1].label, 1);
  write_text(dir / "bad.json", R"({"train": [["a.jpg", "zero", "x"]], "val": [], "test": []})");
  o.split_file = (dir / "bad.json").string();
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(o), o.split_file + ": train[0]");
  write_text(dir / "bad.json", "{\"train\": [");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(o), o.split_file + ": not valid JSON");
}

// ---- saved splits ----------------------------------------------------------------

TEST(SavedSplit, RoundTripAndValidation) {
  DataOptions o = options("oxford_pets");
  o.split_file = (kSplits / "split_zhou_OxfordPets.json").string();
  const Dataset full = vlmadapt::open_dataset(o);
  const Dataset few = vlmadapt::subsample_classes(vlmadapt::sample_few_shot(full, 4, -1, 3), "new");
  EXPECT_EQ(few.train.size(), 18u * 4);
  const fs::path dir = vt::temp_dir("saved_split");
  vlmadapt::save_split(few, (dir / "s.json").string());
  const Dataset back = vlmadapt::load_split(full, (dir / "s.json").string());
  EXPECT_EQ(back.classnames, few.classnames);
  for (const char* s : {"train", "val", "test"}) {
    EXPECT_EQ(refs(back.split(s)), refs(few.split(s)));
    EXPECT_EQ(per_class(back.split(s)), per_class(few.split(s)));
  }
  nlohmann::json j = read_json(dir / "s.json");
  j["train"][0][0] = "no_such_cat_1.jpg";
  write_text(dir / "bad.json", j.dump());
  EXPECT_ERROR_HAS(vlmadapt::load_split(full, (dir / "bad.json").string()), "no_such_cat_1.jpg");
  j = read_json(dir / "s.json");
  j["train"][0][1] = 1 - j["train"][0][1].get<int>();  // the wrong class for that image
  write_text(dir / "bad.json", j.dump());
  EXPECT_ERROR_HAS(vlmadapt::load_split(full, (dir / "bad.json").string()), "has class");
}

// ---- ImageNet and variants (small trees) --------------------------------------------

TEST(ImageNet, FoldersClassFileAndVariants) {
  const fs::path r = vt::temp_dir("imagenet");
  const std::vector<std::string> wnids = {"n01440764", "n01443537", "n01484850", "n01491361"};
  std::string table;
  for (const auto& w : wnids) table += w + " " + (w == "n01443537" ? "" : "name of " + w) + "\n";
  write_text(r / "in" / "classnames.txt", table);
  for (int w = 0; w < 4; ++w) {
    write_png(r / "in" / "train" / wnids[w] / "a.png");
    write_png(r / "in" / "train" / wnids[w] / "b.jpg");
    if (w != 2) write_png(r / "in" / "val" / wnids[w] / "v.png");
  }
  const Dataset in = vlmadapt::open_dataset(options("imagenet", r / "in"));
  EXPECT_EQ(in.classnames[0], "name of n01440764");
  EXPECT_EQ(in.classnames[1], "goldfish");  // a bare wnid takes the built-in name
  EXPECT_EQ(in.train.size(), 8u);
  EXPECT_EQ(in.test.size(), 3u);
  EXPECT_EQ(refs(in.val), refs(in.test));  // CoOp: val = test
  EXPECT_EQ(in.test[2].ref, "val/n01491361/v.png");
  EXPECT_EQ(in.test[2].label, 3);
  EXPECT_EQ(in.templates.size(), 80u);
  EXPECT_EQ(in.load(in.train[0].ref).pixels.size(), cv::Size(10, 12));
  fs::remove(r / "in" / "classnames.txt");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(options("imagenet", r / "in")), "data.classnames_file");

  // ImageNet-A/R: a subset of the wnids, mapped through the class file.
  write_png(r / "a" / wnids[3] / "x.png");
  write_png(r / "a" / wnids[1] / "y.png");
  write_text(r / "a" / "README.txt", "not a class");
  DataOptions a = options("imagenet_a", r / "a");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(a), "data.classnames_file");
  write_text(r / "classes.txt", table);
  a.classnames_file = (r / "classes.txt").string();
  const Dataset ia = vlmadapt::open_dataset(a);
  EXPECT_EQ(ia.classnames, (std::vector<std::string>{"goldfish", "name of n01491361"}));
  EXPECT_EQ(ia.parent_labels, (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(ia.train.empty());
  EXPECT_EQ(ia.test.size(), 2u);
  write_png(r / "a" / "n99999999" / "z.png");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(a), "n99999999");

  // ImageNet-V2: folders in string order, names of int(folder).
  for (const char* f : {"0", "1", "10", "2"}) write_png(r / "v2" / f / "i.jpeg");
  const Dataset v2 = vlmadapt::open_dataset(options("imagenet_v2", r / "v2"));
  const auto names = vlmadapt::builtin_prompts("ImageNet").classnames;
  EXPECT_EQ(v2.parent_labels, (std::vector<int64_t>{0, 1, 10, 2}));
  EXPECT_EQ(v2.classnames, (std::vector<std::string>{names[0], names[1], names[10], names[2]}));
  EXPECT_EQ(v2.test[2].ref, "10/i.jpeg");
  EXPECT_EQ(v2.test[2].label, 2);

  DataOptions sk = options("imagenet_sketch", r / "in" / "train");
  sk.classnames_file = a.classnames_file;
  EXPECT_EQ(vlmadapt::open_dataset(sk).test.size(), 8u);
}

// ---- folder and list datasets ---------------------------------------------------------

TEST(FilesDatasets, FolderPerClassAndListFile) {
  const fs::path r = vt::temp_dir("files");
  write_png(r / "flat" / "sea_lion" / "1.png");
  write_png(r / "flat" / "ant" / "2.png");
  write_png(r / "flat" / "ant" / "1.png");
  write_text(r / "flat" / "ant" / "notes.txt", "skip me");
  const Dataset flat = vlmadapt::open_dataset(options("folder", r / "flat"));
  EXPECT_EQ(flat.classnames, (std::vector<std::string>{"ant", "sea lion"}));
  EXPECT_EQ(refs(flat.test), (std::vector<std::string>{"ant/1.png", "ant/2.png", "sea_lion/1.png"}));
  write_png(r / "split" / "train" / "cat" / "a.png");
  write_png(r / "split" / "train" / "dog" / "b.png");
  write_png(r / "split" / "test" / "dog" / "c.png");
  const Dataset split = vlmadapt::open_dataset(options("folder", r / "split"));
  EXPECT_EQ(split.train.size(), 2u);
  ASSERT_EQ(split.test.size(), 1u);
  EXPECT_EQ(split.test[0].label, 1);
  EXPECT_EQ(split.test[0].ref, "test/dog/c.png");

  write_text(r / "list" / "names.txt", "cat\ndog\n");
  write_text(r / "list" / "items.csv", "# path,label\nimg/a.png,0,train\nimg/b,c.png,1\n\n");
  DataOptions l = options("list");
  l.split_file = (r / "list" / "items.csv").string();
  l.classnames_file = (r / "list" / "names.txt").string();
  const Dataset list = vlmadapt::open_dataset(l);
  EXPECT_EQ(list.classnames, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(refs(list.train), (std::vector<std::string>{"img/a.png"}));
  EXPECT_EQ(refs(list.test), (std::vector<std::string>{"img/b,c.png"}));
  EXPECT_EQ(list.root, (r / "list").string());
  EXPECT_ERROR_HAS(list.load("img/a.png"), (r / "list" / "img/a.png").string());
  write_text(r / "list" / "items.csv", "img/a.png,0\nimg/b.png,2\n");
  EXPECT_ERROR_HAS(vlmadapt::open_dataset(l), l.split_file + ":2");
}

// ---- options, prompts, the whole protocol -----------------------------------------------

TEST(DataOptions, BindsEveryFieldWithHelp) {
  DataOptions o;
  vlmadapt::OptionSet set("data");
  o.bind(set);
  const std::vector<std::string> keys = {"dataset", "root", "split_file", "classnames_file",
                                         "shots", "val_shots", "seed", "classes", "corruption",
                                         "severity", "test_limit", "workers", "support", "support_mode",
                                         "paradigm", "seen_fraction", "unlabelled_limit"};
  EXPECT_EQ(set.entries().size(), keys.size());
  for (const auto& k : keys) {
    const auto* e = set.find("data." + k);
    ASSERT_NE(e, nullptr) << k;
    EXPECT_FALSE(e->help.empty()) << k;
  }
  set.set("data.shots", "4");
  set.set("data.dataset", "dtd");
  EXPECT_EQ(o.shots, 4);
  EXPECT_EQ(o.dataset, "dtd");
}

TEST(BuiltinPrompts, TablesAndUnknownNames) {
  const auto in = vlmadapt::builtin_prompts("ImageNet");
  EXPECT_EQ(in.classnames.size(), 1000u);
  EXPECT_EQ(in.classnames[0], "tench");
  EXPECT_EQ(in.templates.size(), 80u);
  EXPECT_EQ(vlmadapt::builtin_prompts("EuroSAT").templates.size(), 3u);
  EXPECT_ERROR_HAS(vlmadapt::builtin_prompts("Pets"), "unknown dataset 'Pets'");
}

TEST(Protocol, PrepareDatasetAndTestLimit) {
  DataOptions o = options("fashion_mnist");
  o.shots = 2;
  o.classes = "new";
  o.test_limit = 500;
  const Dataset d = vlmadapt::prepare_dataset(o);
  EXPECT_EQ(d.train.size(), 10u);
  EXPECT_EQ(d.classnames.size(), 5u);
  EXPECT_LE(d.test.size(), 500u);  // the limit applies before the class split
  o.seed = 2;
  const Dataset e = vlmadapt::prepare_dataset(o);
  EXPECT_EQ(refs(d.test), refs(e.test));  // the test subset does not depend on the seed
  EXPECT_NE(refs(d.train), refs(e.train));
  o.classes = "all";
  EXPECT_EQ(vlmadapt::open_dataset(o).test.size(), 500u);
}
