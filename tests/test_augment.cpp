// Seeded training augmentations: reproducibility, torchvision's crop-parameter bounds,
// Pillow-exact resizing of the crop, and the flip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <opencv2/core.hpp>
#include <random>

#include "test_util.h"
#include <vlmadapt/data/augment.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/data/image.h>

using vlmadapt::Error;
using vlmadapt::Image;
using vlmadapt::PixelMode;

namespace {

// A deterministic, asymmetric test image (so flips and crops are visible).
Image gradient(int width, int height, int channels, PixelMode mode) {
  cv::Mat m(height, width, CV_MAKETYPE(CV_8U, channels));
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < channels; ++c)
        m.ptr<uint8_t>(y)[x * channels + c] =
            uint8_t((x * 3 + y * 7 + c * 50 + (x * y) % 13) & 255);
  return {m, mode};
}

bool same(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

cv::Mat mirrored(const cv::Mat& m) {
  cv::Mat out;
  cv::flip(m, out, 1);
  return out;
}

}  // namespace

TEST(Augment, SameSeedSameViewDifferentSeedDifferentView) {
  const Image image = gradient(97, 61, 3, PixelMode::RGB);
  const vlmadapt::TrainTransform options{32};
  std::mt19937_64 a(7), b(7), c(8);
  for (int i = 0; i < 5; ++i) {  // the whole stream repeats, not just the first draw
    const cv::Mat va = vlmadapt::train_view(image, options, a);
    EXPECT_TRUE(same(va, vlmadapt::train_view(image, options, b))) << "draw " << i;
    EXPECT_FALSE(same(va, vlmadapt::train_view(image, options, c))) << "draw " << i;
  }
}

TEST(Augment, OutputIsSizeBySizeRgbInEveryMode) {
  std::mt19937_64 rng(1);
  const std::pair<int, PixelMode> modes[] = {
      {1, PixelMode::L}, {3, PixelMode::RGB}, {4, PixelMode::RGBA}, {3, PixelMode::P}};
  for (const auto& [channels, mode] : modes)
    for (int size : {1, 16, 57, 224}) {
      for (bool bicubic : {true, false}) {
        const cv::Mat v = vlmadapt::train_view(gradient(40, 90, channels, mode),
                                               {size, 0.08, 1.0, true, bicubic}, rng);
        EXPECT_EQ(v.size(), cv::Size(size, size));
        EXPECT_EQ(v.type(), CV_8UC3);
      }
    }
  EXPECT_EQ(vlmadapt::test_view(gradient(40, 90, 4, PixelMode::RGBA), 24).size(), cv::Size(24, 24));
}

// Area fraction and aspect ratio stay in range up to the rounding of w and h to pixels,
// and the draws really spread over the ranges.
TEST(Augment, CropBoxesFollowScaleAndRatioBounds) {
  const int width = 640, height = 480;
  std::mt19937_64 rng(42);
  double min_area = 2, max_area = 0, min_ratio = 10, max_ratio = 0;
  for (int i = 0; i < 4000; ++i) {
    const cv::Rect r = vlmadapt::random_resized_crop_params(width, height, rng);
    ASSERT_GT(r.width, 0);
    ASSERT_GT(r.height, 0);
    ASSERT_GE(r.x, 0);
    ASSERT_GE(r.y, 0);
    ASSERT_LE(r.x + r.width, width);
    ASSERT_LE(r.y + r.height, height);
    // w and h are the rounded sqrt(A * ratio) and sqrt(A / ratio): some unrounded pair
    // within half a pixel of them must satisfy the bounds.
    const double total = double(width) * height, w = r.width, h = r.height;
    EXPECT_LE((w - 0.5) * (h - 0.5), 1.0 * total) << r;
    EXPECT_GE((w + 0.5) * (h + 0.5), 0.08 * total) << r;
    EXPECT_LE((w - 0.5) / (h + 0.5), 4.0 / 3.0) << r;
    EXPECT_GE((w + 0.5) / (h - 0.5), 3.0 / 4.0) << r;
    const double area = w * h / total, ratio = w / h;
    min_area = std::min(min_area, area), max_area = std::max(max_area, area);
    min_ratio = std::min(min_ratio, ratio), max_ratio = std::max(max_ratio, ratio);
  }
  EXPECT_LT(min_area, 0.1);
  EXPECT_GT(max_area, 0.9);
  EXPECT_LT(min_ratio, 0.8);
  EXPECT_GT(max_ratio, 1.25);
}

TEST(Augment, FallsBackToTheClampedCentreCrop) {
  std::mt19937_64 rng(3);
  // A full-area crop with ratio <= 4/3 never fits a 1000x100 strip: centre 133x100.
  EXPECT_EQ(vlmadapt::random_resized_crop_params(1000, 100, rng, {1.0, 1.0}),
            cv::Rect(433, 0, 133, 100));
  // A tall strip clamps to ratio 3/4: h = round(100 / 0.75) = 133.
  EXPECT_EQ(vlmadapt::random_resized_crop_params(100, 1000, rng, {1.0, 1.0}),
            cv::Rect(0, 433, 100, 133));
  // Wider than the fixed ratio 1/2: w = round(250 * 0.5) = 125, left = (300 - 125) // 2.
  EXPECT_EQ(vlmadapt::random_resized_crop_params(300, 250, rng, {1.0, 1.0}, {0.5, 0.5}),
            cv::Rect(87, 0, 125, 250));
}

// The view is the Pillow resize of exactly the drawn box (checked against Pillow's own
// output in test_image's PillowResizeWithBoxesAndFilters).
TEST(Augment, ViewIsThePillowResizeOfTheDrawnCrop) {
  const Image image = gradient(83, 64, 4, PixelMode::RGBA);
  for (auto filter : {vlmadapt::Resample::Bicubic, vlmadapt::Resample::Bilinear}) {
    std::mt19937_64 a(11), b(11);
    const cv::Rect box = vlmadapt::random_resized_crop_params(83, 64, a);
    const cv::Mat want = vlmadapt::to_rgb(
        {vlmadapt::pillow_resize(image.pixels(box), image.mode, {48, 48}, filter), image.mode});
    const cv::Mat got =
        vlmadapt::random_resized_crop(image, 48, b, {0.08, 1.0}, {3.0 / 4.0, 4.0 / 3.0}, filter);
    EXPECT_TRUE(same(got, want));
  }
}

TEST(Augment, FlipMirrorsAboutHalfTheTime) {
  const cv::Mat rgb = vlmadapt::to_rgb(gradient(21, 9, 3, PixelMode::RGB));
  std::mt19937_64 rng(5);
  int flipped = 0;
  for (int i = 0; i < 400; ++i) {
    const cv::Mat out = vlmadapt::horizontal_flip(rgb, rng);
    const bool is_flip = same(out, mirrored(rgb));
    ASSERT_TRUE(is_flip || same(out, rgb));
    flipped += is_flip;
  }
  EXPECT_GT(flipped, 140);
  EXPECT_LT(flipped, 260);
  std::mt19937_64 never(5), always(5);
  EXPECT_TRUE(same(vlmadapt::horizontal_flip(rgb, never, 0.0), rgb));
  EXPECT_TRUE(same(vlmadapt::horizontal_flip(rgb, always, 1.0), mirrored(rgb)));
  // In train_view the crop is drawn first, so flip on/off with one seed differ by a mirror.
  const Image image = gradient(70, 50, 3, PixelMode::RGB);
  int mirrors = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    std::mt19937_64 a(seed), b(seed);
    const cv::Mat with = vlmadapt::train_view(image, {24, 0.08, 1.0, true, true}, a);
    const cv::Mat without = vlmadapt::train_view(image, {24, 0.08, 1.0, false, true}, b);
    ASSERT_TRUE(same(with, without) || same(with, mirrored(without))) << seed;
    mirrors += !same(with, without);
  }
  EXPECT_GT(mirrors, 5);
  EXPECT_LT(mirrors, 35);
}

TEST(Augment, RejectsBadArguments) {
  const Image image = gradient(20, 20, 3, PixelMode::RGB);
  std::mt19937_64 rng(0);
  EXPECT_THROW(vlmadapt::random_resized_crop(image, 0, rng), Error);
  EXPECT_THROW(vlmadapt::random_resized_crop(image, 8, rng, {0.5, 0.1}), Error);
  EXPECT_THROW(vlmadapt::random_resized_crop(image, 8, rng, {0.1, 1.0}, {0.0, 1.0}), Error);
  EXPECT_THROW(vlmadapt::random_resized_crop(image, 8, rng, {0.1, 1.0}, {0.75, 1.3},
                                             vlmadapt::Resample::Nearest),
               Error);
  EXPECT_THROW(vlmadapt::random_resized_crop_params(0, 10, rng), Error);
}
