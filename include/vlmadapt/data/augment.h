// Seeded training augmentations: torchvision's RandomResizedCrop and RandomHorizontalFlip
// on PIL images, with Pillow-exact resizing. All randomness comes from the caller's
// std::mt19937_64 (no global state), so a seed reproduces a view on every platform: the
// uniform and integer draws are computed here, not by <random>'s distributions, whose
// algorithms differ between standard libraries.
#pragma once
#include <opencv2/core.hpp>
#include <random>
#include <utility>

#include <vlmadapt/data/image.h>

namespace vlmadapt {

// RandomResizedCrop.get_params on a width x height image: up to 10 draws of an area
// fraction (uniform in `scale`) and an aspect ratio (log-uniform in `ratio`), else the
// centre crop with the ratio clamped. Returns x = left, y = top, width, height.
// Throws Error for an empty image or a range with lo <= 0 or lo > hi.
cv::Rect random_resized_crop_params(int width, int height, std::mt19937_64& rng,
                                    std::pair<double, double> scale = {0.08, 1.0},
                                    std::pair<double, double> ratio = {3.0 / 4.0, 4.0 / 3.0});

// The crop above, resized to size x size as torchvision does on a PIL image (crop, then
// Image.resize in the image's own mode; P uses nearest). Returns uint8 RGB.
// `interpolation` is Resample::Bicubic or Resample::Bilinear.
cv::Mat random_resized_crop(const Image& image, int size, std::mt19937_64& rng,
                            std::pair<double, double> scale = {0.08, 1.0},
                            std::pair<double, double> ratio = {3.0 / 4.0, 4.0 / 3.0},
                            Resample interpolation = Resample::Bicubic);
// The same for 1 (L), 3 (RGB) or 4 (RGBA) channel uint8 pixels.
cv::Mat random_resized_crop(const cv::Mat& pixels, int size, std::mt19937_64& rng,
                            std::pair<double, double> scale = {0.08, 1.0},
                            std::pair<double, double> ratio = {3.0 / 4.0, 4.0 / 3.0},
                            Resample interpolation = Resample::Bicubic);

// Mirrors left-right with probability p (one draw per call, like RandomHorizontalFlip).
cv::Mat horizontal_flip(const cv::Mat& image, std::mt19937_64& rng, double p = 0.5);

struct TrainTransform {
  int size = 224;
  double scale_min = 0.08;
  double scale_max = 1.0;
  bool flip = true;     // RandomHorizontalFlip(0.5) after the crop
  bool bicubic = true;  // else bilinear
};

// RandomResizedCrop(size, scale, bicubic|bilinear) then optionally the flip: uint8 RGB.
cv::Mat train_view(const Image& image, const TrainTransform& options, std::mt19937_64& rng);
// The deterministic evaluation view: resize_crop (CLIP's reference transform).
cv::Mat test_view(const Image& image, int n_px);

}  // namespace vlmadapt
