// ImageNet-C style corruptions: each one changes the image, grows with severity, and is
// the same image again under the same seed; bad names and severities are errors.
#include <gtest/gtest.h>

#include <opencv2/core.hpp>

#include <vlmadapt/data/corruption.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/image.h>

#include "test_util.h"

namespace vlmadapt {
namespace {

using testing::error_of;

// A real photo and a real Fashion-MNIST image (grey, 28 px) from the fixtures.
cv::Mat photo() { return read_image((testing::fixtures() / "preprocess" / "images" / "chelsea.png").string()); }
cv::Mat garment() { return read_image((testing::fixtures() / "preprocess" / "images" / "fmnist736.png").string()); }

double mean_abs_diff(const cv::Mat& a, const cv::Mat& b) {
  cv::Mat d;
  cv::absdiff(a, b, d);
  const cv::Scalar m = cv::mean(d);
  return (m[0] + m[1] + m[2]) / 3;
}

bool identical(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

TEST(Corruption, EightNamesLikeImageNetC) {
  EXPECT_EQ(corruption_names(), (std::vector<std::string>{"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                                                          "contrast", "brightness", "pixelate", "jpeg_compression"}));
}

TEST(Corruption, EachChangesTheImageAndKeepsItsShape) {
  for (const auto& image : {photo(), garment()}) {
    for (const auto& name : corruption_names()) {
      for (int s = 1; s <= 5; ++s) {
        cv::Mat out = corrupt(image, name, s, 7);
        ASSERT_EQ(out.size(), image.size()) << name;
        ASSERT_EQ(out.type(), CV_8UC3) << name;
        EXPECT_GT(mean_abs_diff(out, image), 0.5) << name << " severity " << s << " left the image as it was";
      }
    }
  }
}

TEST(Corruption, SameSeedSameImageOtherSeedOtherNoise) {
  const cv::Mat image = photo();
  for (const auto& name : corruption_names()) {
    EXPECT_TRUE(identical(corrupt(image, name, 3, 42), corrupt(image, name, 3, 42))) << name;
  }
  for (const std::string name : {"gaussian_noise", "shot_noise", "impulse_noise"})
    EXPECT_FALSE(identical(corrupt(image, name, 3, 42), corrupt(image, name, 3, 43))) << name;
}

TEST(Corruption, DamageGrowsWithSeverity) {
  const cv::Mat image = photo();
  for (const std::string name : {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "contrast", "pixelate"}) {
    double last = 0;
    for (int s = 1; s <= 5; ++s) {
      const double d = mean_abs_diff(corrupt(image, name, s, 1), image);
      EXPECT_GT(d, last) << name << " severity " << s;
      last = d;
    }
  }
}

TEST(Corruption, DatasetReadsTheSameCorruptedImageEveryTime) {
  DataOptions o;
  o.dataset = "fashion_mnist";
  Dataset clean = open_dataset(o);
  Dataset noisy = with_corruption(clean, "gaussian_noise", 3);
  EXPECT_NE(noisy.name, clean.name);  // feature caches must not mix the two
  ASSERT_EQ(noisy.test.size(), clean.test.size());
  for (size_t i : {size_t{0}, size_t{1}, size_t{9999}}) {
    const auto& ref = clean.test[i].ref;
    const cv::Mat first = to_rgb(noisy.load(ref)), again = to_rgb(noisy.load(ref));
    EXPECT_TRUE(identical(first, again)) << ref;
    EXPECT_GT(mean_abs_diff(first, to_rgb(clean.load(ref))), 1.0) << ref;
  }
  // Two different images get different noise, not one shared pattern.
  const cv::Mat a = to_rgb(noisy.load(clean.test[0].ref)), b = to_rgb(noisy.load(clean.test[1].ref));
  cv::Mat na, nb;
  cv::subtract(a, to_rgb(clean.load(clean.test[0].ref)), na, cv::noArray(), CV_32F);
  cv::subtract(b, to_rgb(clean.load(clean.test[1].ref)), nb, cv::noArray(), CV_32F);
  EXPECT_GT(cv::norm(na, nb, cv::NORM_L1), 0);
}

TEST(Corruption, BadNameOrSeverityIsAnErrorNamingTheKey) {
  const cv::Mat image = garment();
  EXPECT_NE(error_of([&] { corrupt(image, "fog", 3, 0); }).find("data.corruption: unknown corruption 'fog'"), std::string::npos);
  EXPECT_NE(error_of([&] { corrupt(image, "contrast", 0, 0); }).find("data.severity: expected 1 to 5, got 0"), std::string::npos);
  EXPECT_NE(error_of([&] { corrupt(image, "contrast", 6, 0); }).find("got 6"), std::string::npos);
  Dataset d;
  EXPECT_NE(error_of([&] { with_corruption(d, "snow", 1); }).find("known: gaussian_noise"), std::string::npos);
}

}  // namespace
}  // namespace vlmadapt
