// AugMix's operations (Hendrycks et al. 2020; google-research/augmix augmentations.py) as
// TPT uses them for its views on non-ImageNet datasets (azshue/TPT data/augmix_ops.py):
// autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x,
// translate_y, on uint8 RGB images. A level is drawn uniformly in [0.1, severity] and
// scaled to each operation's range at level 10 (rotate 30 degrees, shear 0.3, translate
// a third of the side), as in the original. All randomness comes from the caller's
// generator. OpenCV's warps stand in for Pillow's (same maps, bilinear, black fill);
// they are augmentations, so exact pixel agreement with Pillow is not sought.
#pragma once
#include <opencv2/core.hpp>

#include <random>
#include <string>
#include <vector>

namespace vlmadapt::augmix {

const std::vector<std::string>& operation_names();

// Applies one named operation at `severity` (AugMix default 1; TPT passes 1).
// Throws vlmadapt::Error for an unknown name.
cv::Mat apply(const std::string& operation, const cv::Mat& rgb, int severity, std::mt19937_64& rng);

// The deterministic operations, exposed for tests.
cv::Mat autocontrast(const cv::Mat& rgb);
cv::Mat equalize(const cv::Mat& rgb);
cv::Mat posterize(const cv::Mat& rgb, int bits);
cv::Mat solarize(const cv::Mat& rgb, int threshold);
// Pillow's Image.transform(AFFINE, (a, b, c, d, e, f)): output (x, y) samples the input
// at (a x + b y + c, d x + e y + f), bilinear, zero outside.
cv::Mat affine(const cv::Mat& rgb, double a, double b, double c, double d, double e, double f);

struct Mix {
  std::vector<cv::Mat> chains;  // 3 augmented copies of the input
  std::vector<float> weights;   // Dirichlet(1, 1, 1)
  float m = 0;                  // Beta(1, 1): share of the unaugmented input
};
// The random part of AugMix: `width` chains of 1..3 operations each on `rgb`. The caller
// mixes them after normalisation: m * norm(x) + (1 - m) * sum_i w_i * norm(chain_i).
Mix draw_mix(const cv::Mat& rgb, std::mt19937_64& rng, int severity = 1, int width = 3);

}  // namespace vlmadapt::augmix
