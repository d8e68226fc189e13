// Fashion-MNIST from its IDX files (gzip): {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
// Labels are read when the dataset opens (they define the items); the 55 MB of pixels are
// decompressed on the first image request and shared by every copy of the Dataset.
#include <vlmadapt/data/dataset.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

#include "core/resources.h"
#include "dataset_readers.h"

namespace vlmadapt::detail {

namespace fs = std::filesystem;

namespace {

const char* const kDefaultDir = "/usr/share/datasets/fashion-mnist";
constexpr uint32_t kLabelMagic = 0x00000801;  // unsigned byte, 1 dimension
constexpr uint32_t kImageMagic = 0x00000803;  // unsigned byte, 3 dimensions
constexpr int kClasses = 10;

uint32_t be32(const std::string& b, size_t at) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data()) + at;
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

// The largest IDX file decompressed: Fashion-MNIST's and MNIST's are under 50 MB.
constexpr size_t kMaxIdxBytes = size_t(1) << 30;

std::string gunzip_file(const std::string& path) {
  return resources::gunzip(read_file(path, kMaxIdxBytes, "an IDX file"), path, kMaxIdxBytes);
}

}  // namespace

// IDX1 labels: magic, count, then one byte per item, each a class index.
std::vector<uint8_t> parse_idx_labels(const std::string& b, const std::string& path) {
  if (b.size() < 8 || be32(b, 0) != kLabelMagic)
    throw Error(path + ": not an IDX label file (expected magic 0x00000801)");
  const uint64_t n = be32(b, 4);
  if (b.size() != 8 + n)
    throw Error(path + ": header says " + std::to_string(n) + " labels but the file holds " +
                std::to_string(b.size() - 8) + " (truncated or corrupt)");
  std::vector<uint8_t> labels(b.begin() + 8, b.end());
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= kClasses)
      throw Error(path + ": label " + std::to_string(labels[i]) + " of item " + std::to_string(i) +
                  " is out of range 0..9");
  return labels;
}

// IDX3 images: magic, count, rows, cols, then count*rows*cols bytes, row-major.
IdxImages parse_idx_images(std::string bytes, const std::string& path, size_t expected_count) {
  IdxImages im;
  im.bytes = std::move(bytes);
  const std::string& b = im.bytes;
  if (b.size() < 16 || be32(b, 0) != kImageMagic)
    throw Error(path + ": not an IDX image file (expected magic 0x00000803)");
  im.count = be32(b, 4), im.rows = be32(b, 8), im.cols = be32(b, 12);
  if (im.rows == 0 || im.cols == 0 || im.rows > 4096 || im.cols > 4096)
    throw Error(path + ": implausible image size " + std::to_string(im.rows) + "x" +
                std::to_string(im.cols));
  if (b.size() != 16 + uint64_t(im.count) * im.rows * im.cols)
    throw Error(path + ": header says " + std::to_string(im.count) + " images of " +
                std::to_string(im.rows) + "x" + std::to_string(im.cols) +
                " but the size does not match (truncated or corrupt)");
  if (im.count != expected_count)
    throw Error(path + ": holds " + std::to_string(im.count) + " images but its label file has " +
                std::to_string(expected_count));
  return im;
}

namespace {

using Images = IdxImages;

std::vector<uint8_t> read_labels(const std::string& path) { return parse_idx_labels(gunzip_file(path), path); }

Images read_images(const std::string& path, size_t expected_count) {
  return parse_idx_images(gunzip_file(path), path, expected_count);
}

// Shared by all copies of one opened dataset; thread-safe.
class Store {
 public:
  Store(std::string dir, size_t train_n, size_t test_n)
      : dir_(std::move(dir)), expected_{train_n, test_n} {}

  Image load(const std::string& ref) {
    const auto slash = ref.find('/');
    const std::string part = ref.substr(0, slash == std::string::npos ? 0 : slash);
    const int which = part == "train" ? 0 : part == "test" ? 1 : -1;
    size_t index = 0, used = 0;
    try {
      if (which >= 0) index = std::stoul(ref.substr(slash + 1), &used);
    } catch (const std::exception&) {
    }
    if (which < 0 || used == 0 || used != ref.size() - slash - 1 || index >= expected_[which])
      throw Error("fashion_mnist: unknown item '" + ref + "' (expected train/<0.." +
                  std::to_string(expected_[0] - 1) + "> or test/<0.." +
                  std::to_string(expected_[1] - 1) + ">)");
    const Images& im = images(which);
    const size_t size = size_t(im.rows) * im.cols;
    cv::Mat pixels(int(im.rows), int(im.cols), CV_8UC1);
    std::memcpy(pixels.data, im.bytes.data() + 16 + index * size, size);
    return Image{pixels, PixelMode::L};
  }

 private:
  const Images& images(int which) {
    // A mutex rather than std::call_once: a failed decode must be able to throw and be
    // retried, which call_once handles badly on some standard libraries.
    std::lock_guard<std::mutex> lock(mutex_);
    if (!loaded_[which]) {
      const char* file = which == 0 ? "train-images-idx3-ubyte.gz" : "t10k-images-idx3-ubyte.gz";
      images_[which] = read_images((fs::path(dir_) / file).string(), expected_[which]);
      loaded_[which] = true;
    }
    return images_[which];
  }

  std::string dir_;
  size_t expected_[2];
  std::mutex mutex_;
  bool loaded_[2] = {false, false};
  Images images_[2];
};

std::vector<Item> items_of(const std::vector<uint8_t>& labels, const std::string& prefix) {
  std::vector<Item> items(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) items[i] = {prefix + std::to_string(i), labels[i]};
  return items;
}

}  // namespace

Dataset open_fashion_mnist(const DataOptions& o) {
  const std::string dir = o.root.empty() ? kDefaultDir : o.root;
  for (const char* f : {"train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"}) {
    std::error_code ec;
    if (!fs::is_regular_file(fs::path(dir) / f, ec))
      throw Error((fs::path(dir) / f).string() + ": no such file (Fashion-MNIST, data.root = " +
                  dir + "; Debian package dataset-fashion-mnist)");
  }
  const auto train = read_labels((fs::path(dir) / "train-labels-idx1-ubyte.gz").string());
  const auto test = read_labels((fs::path(dir) / "t10k-labels-idx1-ubyte.gz").string());
  Dataset d;
  d.name = "fashion_mnist";
  d.root = dir;
  d.classnames = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  // The first one is the default single template.
  d.templates = {"a photo of a {}.", "a photo of the {}, a type of clothing.",
                 "a black and white photo of a {}.", "a low resolution photo of a {}."};
  d.train = items_of(train, "train/");
  d.test = items_of(test, "test/");
  auto store = std::make_shared<Store>(dir, train.size(), test.size());
  d.load = [store](const std::string& ref) { return store->load(ref); };
  return d;
}

}  // namespace vlmadapt::detail
