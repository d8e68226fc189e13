// Seeded training augmentations (see augment.h). The crop parameters follow torchvision's
// RandomResizedCrop.get_params line by line, including Python's round-half-to-even.
#include <vlmadapt/data/augment.h>

#include <cmath>
#include <cstdint>
#include <opencv2/core.hpp>
#include <string>

#include <vlmadapt/core/error.h>
#include "core/seeded.h"

namespace vlmadapt {
namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) { return lo + (hi - lo) * seeded::uniform(rng); }

// Python's round(): halves go to the even neighbour.
int round_half_even(double x) {
  const double r = std::floor(x), frac = x - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) return int(r + 1.0);
  return int(r);
}

void check_range(const std::pair<double, double>& r, const char* what) {
  if (!(r.first > 0.0) || !(r.first <= r.second) || !std::isfinite(r.second))
    throw Error(std::string("random_resized_crop: ") + what + " must satisfy 0 < lo <= hi, got (" +
                std::to_string(r.first) + ", " + std::to_string(r.second) + ")");
}

PixelMode mode_of(const cv::Mat& pixels) {
  if (pixels.channels() == 1) return PixelMode::L;
  return pixels.channels() == 4 ? PixelMode::RGBA : PixelMode::RGB;
}

}  // namespace

cv::Rect random_resized_crop_params(int width, int height, std::mt19937_64& rng,
                                    std::pair<double, double> scale,
                                    std::pair<double, double> ratio) {
  if (width < 1 || height < 1) throw Error("random_resized_crop: empty image");
  check_range(scale, "scale");
  check_range(ratio, "ratio");
  const double area = double(height) * width;
  const double log_lo = std::log(ratio.first), log_hi = std::log(ratio.second);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform(rng, scale.first, scale.second);
    const double aspect = std::exp(uniform(rng, log_lo, log_hi));
    const int w = round_half_even(std::sqrt(target_area * aspect));
    const int h = round_half_even(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int top = int(seeded::below(rng, uint64_t(height - h + 1)));
      const int left = int(seeded::below(rng, uint64_t(width - w + 1)));
      return {left, top, w, h};
    }
  }
  // Fallback: the whole image, or its centre with the ratio clamped into range.
  const double in_ratio = double(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio.first) {
    h = round_half_even(w / ratio.first);
  } else if (in_ratio > ratio.second) {
    w = round_half_even(h * ratio.second);
  }
  return {(width - w) / 2, (height - h) / 2, w, h};
}

cv::Mat random_resized_crop(const Image& image, int size, std::mt19937_64& rng,
                            std::pair<double, double> scale, std::pair<double, double> ratio,
                            Resample interpolation) {
  if (size < 1) throw Error("random_resized_crop: size must be positive");
  if (interpolation == Resample::Nearest)
    throw Error("random_resized_crop: interpolation must be bicubic or bilinear");
  const cv::Rect box =
      random_resized_crop_params(image.pixels.cols, image.pixels.rows, rng, scale, ratio);
  // torchvision crops first, then resizes the crop: the filter never reads outside it.
  const cv::Mat resized = pillow_resize(image.pixels(box), image.mode, {size, size}, interpolation);
  return to_rgb({resized, image.mode});
}

cv::Mat random_resized_crop(const cv::Mat& pixels, int size, std::mt19937_64& rng,
                            std::pair<double, double> scale, std::pair<double, double> ratio,
                            Resample interpolation) {
  return random_resized_crop(Image{pixels, mode_of(pixels)}, size, rng, scale, ratio,
                             interpolation);
}

cv::Mat horizontal_flip(const cv::Mat& image, std::mt19937_64& rng, double p) {
  if (seeded::uniform(rng) < p) {
    cv::Mat out;
    cv::flip(image, out, 1);
    return out;
  }
  return image.clone();
}

cv::Mat train_view(const Image& image, const TrainTransform& options, std::mt19937_64& rng) {
  const Resample filter = options.bicubic ? Resample::Bicubic : Resample::Bilinear;
  cv::Mat view =
      random_resized_crop(image, options.size, rng, {options.scale_min, options.scale_max},
                          {3.0 / 4.0, 4.0 / 3.0}, filter);
  return options.flip ? horizontal_flip(view, rng) : view;
}

cv::Mat test_view(const Image& image, int n_px) { return resize_crop(image, n_px); }

}  // namespace vlmadapt
