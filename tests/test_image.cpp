// Decoding and CLIP's reference preprocessing against goldens made with Pillow:
// /work/shared fixtures (openai/CLIP _transform on real photos) and tests/data
// (small images in every Pillow mode, made by tests/data/make_image_goldens.py).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <sstream>
#include <string>

#include "test_util.h"
#include <vlmadapt/core/error.h>
#include <vlmadapt/data/image.h>
#include <vlmadapt/core/safetensors.h>

namespace vt = vlmadapt::testing;
using vlmadapt::Error;
using vlmadapt::PixelMode;

namespace {

std::filesystem::path preprocess_dir() { return vt::fixtures() / "preprocess"; }
std::filesystem::path data_dir() { return vt::source_dir() / "tests" / "data"; }

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("missing " + path.string());
  return nlohmann::json::parse(in);
}

// HWC uint8 tensor -> cv::Mat view (the tensor must outlive it).
cv::Mat as_mat(const at::Tensor& t) {
  return cv::Mat(int(t.size(0)), int(t.size(1)), CV_8UC3, t.data_ptr());
}

struct MatchStats {
  double equal_fraction = 0;
  int max_diff = 0;
  std::string describe() const {
    std::ostringstream s;
    s << "equal " << equal_fraction * 100.0 << "%, max |diff| " << max_diff;
    return s.str();
  }
};

MatchStats compare(const cv::Mat& got, const cv::Mat& want) {
  MatchStats stats;
  if (got.size() != want.size() || got.type() != want.type()) {
    stats.max_diff = 256;
    return stats;
  }
  cv::Mat diff;
  cv::absdiff(got, want, diff);
  double max_val = 0;
  cv::minMaxLoc(diff.reshape(1), nullptr, &max_val);
  stats.max_diff = int(max_val);
  stats.equal_fraction = 1.0 - double(cv::countNonZero(diff.reshape(1))) / double(diff.total() * 3);
  return stats;
}

bool is_jpeg(const std::string& file) {
  return file.size() > 4 && file.substr(file.size() - 4) == ".jpg";
}

}  // namespace

// Every fixture image and size: >= 99.9% of the uint8 crop equal, none off by more than 1.
TEST(ImageGolden, ReferenceCropsMatchPillow) {
  const auto meta = read_json(preprocess_dir() / "preprocess.json");
  const auto golden =
      vlmadapt::read_safetensors((preprocess_dir() / "preprocess.safetensors").string());
  std::string worst;
  double worst_fraction = 2.0;
  for (const auto& file : meta.at("files")) {
    const std::string name = file.get<std::string>();
    const auto image = vlmadapt::decode_image((preprocess_dir() / "images" / name).string());
    for (const auto& size : meta.at("sizes")) {
      const int n = size.get<int>();
      const std::string key = name + "@" + std::to_string(n) + ":u8";
      ASSERT_TRUE(golden.count(key)) << key;
      const cv::Mat got = vlmadapt::resize_crop(image, n);
      ASSERT_EQ(got.size(), cv::Size(n, n)) << key;
      const MatchStats s = compare(got, as_mat(golden.at(key)));
      EXPECT_GE(s.equal_fraction, 0.999) << key << ": " << s.describe();
      EXPECT_LE(s.max_diff, 1) << key << ": " << s.describe();
      if (s.equal_fraction < worst_fraction) {
        worst_fraction = s.equal_fraction;
        worst = key + ": " + s.describe();
      }
    }
  }
  std::printf("worst fixture crop: %s\n", worst.c_str());
}

TEST(ImageGolden, NormalizedTensorsMatchTorchvision) {
  const auto golden =
      vlmadapt::read_safetensors((preprocess_dir() / "preprocess.safetensors").string());
  int checked = 0;
  for (const auto& [key, want] : golden) {
    if (key.find(":u8") != std::string::npos) continue;
    const auto pos = key.rfind('@');
    const std::string file = key.substr(0, pos);
    const int n = std::stoi(key.substr(pos + 1));
    const at::Tensor got = vlmadapt::preprocess((preprocess_dir() / "images" / file).string(), n);
    ASSERT_EQ(got.sizes(), want.sizes()) << key;
    const double max_err = (got - want.to(torch::kFloat32)).abs().max().item<double>();
    EXPECT_LE(max_err, 1e-6) << key;
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

// Odd sizes, every Pillow mode, round-half-even crop offsets: exact, except that JPEG
// decoders may legitimately differ by one step.
TEST(ImageGolden, EveryModeMatchesPillow) {
  const auto cases = read_json(data_dir() / "image_goldens.json");
  const auto golden =
      vlmadapt::read_safetensors((data_dir() / "image_goldens.safetensors").string());
  for (const auto& c : cases.at("clip")) {
    const std::string file = c.at("file"), key = c.at("key");
    const auto image = vlmadapt::decode_image((data_dir() / "images" / file).string());
    const MatchStats s =
        compare(vlmadapt::resize_crop(image, c.at("n_px").get<int>()), as_mat(golden.at(key)));
    if (is_jpeg(file)) {
      EXPECT_GE(s.equal_fraction, 0.999) << key << ": " << s.describe();
      EXPECT_LE(s.max_diff, 1) << key << ": " << s.describe();
    } else {
      EXPECT_EQ(s.max_diff, 0) << key << ": " << s.describe();
    }
  }
}

TEST(ImageGolden, PillowResizeWithBoxesAndFilters) {
  const auto cases = read_json(data_dir() / "image_goldens.json");
  const auto golden =
      vlmadapt::read_safetensors((data_dir() / "image_goldens.safetensors").string());
  for (const auto& c : cases.at("resize")) {
    const std::string file = c.at("file"), key = c.at("key"), filter = c.at("filter");
    auto image = vlmadapt::decode_image((data_dir() / "images" / file).string());
    if (!c.at("crop").is_null()) {
      const auto r = c.at("crop");  // Pillow crop box (x0, y0, x1, y1)
      const int x0 = r[0], y0 = r[1], x1 = r[2], y1 = r[3];
      image.pixels = image.pixels(cv::Rect(x0, y0, x1 - x0, y1 - y0));
    }
    vlmadapt::ResizeBox box{};
    if (!c.at("box").is_null())
      for (int i = 0; i < 4; ++i) box[i] = c.at("box")[i].get<float>();
    const auto f = filter == "bilinear"  ? vlmadapt::Resample::Bilinear
                   : filter == "nearest" ? vlmadapt::Resample::Nearest
                                         : vlmadapt::Resample::Bicubic;
    const cv::Size size(c.at("size")[0].get<int>(), c.at("size")[1].get<int>());
    const cv::Mat out = vlmadapt::pillow_resize(image.pixels, image.mode, size, f, box);
    const MatchStats s = compare(vlmadapt::to_rgb({out, image.mode}), as_mat(golden.at(key)));
    EXPECT_EQ(s.max_diff, 0) << key << ": " << s.describe();
  }
}

TEST(ImageDecode, ModesFollowPillow) {
  const auto cases = read_json(data_dir() / "image_goldens.json");
  for (const auto& [file, pil_mode] : cases.at("modes").items()) {
    const auto image = vlmadapt::decode_image((data_dir() / "images" / file).string());
    const std::string m = pil_mode;
    const PixelMode want = (m == "L" || m == "I")       ? PixelMode::L
                           : (m == "RGBA" || m == "LA") ? PixelMode::RGBA
                           : (m == "P" || m == "1")     ? PixelMode::P
                                                        : PixelMode::RGB;
    EXPECT_EQ(int(image.mode), int(want)) << file << " (Pillow mode " << m << ")";
    EXPECT_EQ(image.pixels.depth(), m == "I" ? CV_16U : CV_8U) << file;
  }
}

TEST(ImageDecode, GreyAlphaPaletteGiveThreeChannels) {
  const auto dir = preprocess_dir() / "images";
  const std::pair<const char*, PixelMode> files[] = {
      {"gray.png", PixelMode::L}, {"alpha.png", PixelMode::RGBA}, {"palette.png", PixelMode::P}};
  for (const auto& [file, mode] : files) {
    const auto image = vlmadapt::decode_image((dir / file).string());
    EXPECT_EQ(int(image.mode), int(mode)) << file;
    EXPECT_EQ(vlmadapt::to_rgb(image).type(), CV_8UC3) << file;
    EXPECT_EQ(vlmadapt::read_image((dir / file).string()).type(), CV_8UC3) << file;
    EXPECT_EQ(vlmadapt::resize_crop(image, 32).type(), CV_8UC3) << file;
  }
}

TEST(ImageDecode, NonImageAndMissingFilesThrowNamingThePath) {
  const auto dir = vt::temp_dir("image_errors");
  const std::string text = (dir / "notes.txt").string(), empty = (dir / "empty.png").string();
  const std::string missing = (dir / "missing.jpg").string(), cut = (dir / "cut.png").string();
  std::ofstream(text) << "this is not an image\n";
  std::ofstream(empty).close();
  {  // a PNG cut short after its header
    std::ifstream in((preprocess_dir() / "images" / "scene1.png").string(), std::ios::binary);
    std::string bytes(200, '\0');
    in.read(&bytes[0], 200);
    std::ofstream(cut, std::ios::binary) << bytes;
  }
  for (const std::string& path : {text, empty, missing, cut}) {
    try {
      (void)vlmadapt::decode_image(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(vlmadapt::decode_image_bytes("GIF89a garbage", "mem.gif"), Error);
  EXPECT_THROW(vlmadapt::preprocess(missing, 224), Error);
  std::filesystem::remove_all(dir);
}

TEST(ImageResize, OutputShapesAndChannelOverloads) {
  cv::Mat rgb(37, 91, CV_8UC3, cv::Scalar(10, 200, 30));
  for (int n : {1, 7, 32, 224}) {
    const cv::Mat out = vlmadapt::resize_crop(rgb, n);
    EXPECT_EQ(out.size(), cv::Size(n, n));
    EXPECT_EQ(out.type(), CV_8UC3);
  }
  // A flat image stays flat through every path, in RGB order.
  const cv::Mat flat = vlmadapt::resize_crop(rgb, 50);
  EXPECT_EQ(flat.at<cv::Vec3b>(25, 25), cv::Vec3b(10, 200, 30));
  const cv::Mat grey = vlmadapt::resize_crop(cv::Mat(20, 30, CV_8UC1, cv::Scalar(77)), 16);
  EXPECT_EQ(grey.at<cv::Vec3b>(3, 4), cv::Vec3b(77, 77, 77));
  const cv::Mat rgba =
      vlmadapt::resize_crop(cv::Mat(20, 30, CV_8UC4, cv::Scalar(1, 2, 3, 255)), 16);
  EXPECT_EQ(rgba.at<cv::Vec3b>(8, 8), cv::Vec3b(1, 2, 3));
  EXPECT_THROW(vlmadapt::resize_crop(rgb, 0), Error);
  EXPECT_THROW(vlmadapt::resize_crop(cv::Mat(), 8), Error);
  EXPECT_THROW(vlmadapt::resize_crop(cv::Mat(4, 4, CV_32FC3), 8), Error);
}

TEST(ImageNormalize, MatchesToTensorThenNormalize) {
  cv::Mat rgb(2, 3, CV_8UC3);
  for (int i = 0; i < 18; ++i) rgb.data[i] = uint8_t(i * 15);
  const vlmadapt::Normalization norm;
  const at::Tensor t = vlmadapt::normalize(rgb, norm);
  ASSERT_EQ(t.sizes(), (at::IntArrayRef{3, 2, 3}));
  // The torchvision computation in torch itself: float32 /255, then (x - mean) / std.
  const at::Tensor hwc = torch::from_blob(rgb.data, {2, 3, 3}, torch::kUInt8);
  const at::Tensor mean = torch::tensor({norm.mean[0], norm.mean[1], norm.mean[2]}).view({3, 1, 1});
  const at::Tensor stdv = torch::tensor({norm.std[0], norm.std[1], norm.std[2]}).view({3, 1, 1});
  const at::Tensor want = (hwc.permute({2, 0, 1}).to(torch::kFloat32).div(255) - mean) / stdv;
  EXPECT_TRUE(torch::equal(t, want));
  EXPECT_THROW(vlmadapt::normalize(cv::Mat(2, 2, CV_8UC1), norm), Error);
}
