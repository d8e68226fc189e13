#include <vlmadapt/data/augmix.h>

#include <opencv2/imgproc.hpp>

#include <array>
#include <cmath>

#include <vlmadapt/core/error.h>

#include "core/seeded.h"

namespace vlmadapt::augmix {
namespace {

// augmentations.py: sample_level, int_parameter and float_parameter.
double sample_level(int severity, std::mt19937_64& rng) { return 0.1 + seeded::uniform(rng) * (severity - 0.1); }
int int_parameter(double level, double maxval) { return static_cast<int>(level * maxval / 10); }
double float_parameter(double level, double maxval) { return level * maxval / 10; }
double random_sign(std::mt19937_64& rng) { return seeded::uniform(rng) > 0.5 ? -1.0 : 1.0; }

cv::Mat per_channel_lut(const cv::Mat& rgb, const std::array<std::array<uchar, 256>, 3>& luts) {
  std::vector<cv::Mat> ch;
  cv::split(rgb, ch);
  for (size_t c = 0; c < ch.size(); ++c) {
    cv::Mat lut(1, 256, CV_8U, const_cast<uchar*>(luts[c].data()));
    cv::LUT(ch[c], lut, ch[c]);
  }
  cv::Mat out;
  cv::merge(ch, out);
  return out;
}

std::array<int, 256> histogram(const cv::Mat& channel) {
  std::array<int, 256> h{};
  for (auto it = channel.begin<uchar>(); it != channel.end<uchar>(); ++it) ++h[*it];
  return h;
}

cv::Mat rotate(const cv::Mat& rgb, double degrees) {
  // Pillow rotates counter-clockwise about the image centre (w/2, h/2 in corner coordinates).
  const cv::Point2f centre(rgb.cols / 2.0f - 0.5f, rgb.rows / 2.0f - 0.5f);
  cv::Mat out;
  cv::warpAffine(rgb, out, cv::getRotationMatrix2D(centre, degrees, 1.0), rgb.size(), cv::INTER_LINEAR,
                 cv::BORDER_CONSTANT, cv::Scalar::all(0));
  return out;
}

}  // namespace

const std::vector<std::string>& operation_names() {
  static const std::vector<std::string> names = {"autocontrast", "equalize", "posterize", "rotate", "solarize",
                                                 "shear_x", "shear_y", "translate_x", "translate_y"};
  return names;
}

cv::Mat autocontrast(const cv::Mat& rgb) {
  std::array<std::array<uchar, 256>, 3> luts{};
  std::vector<cv::Mat> ch;
  cv::split(rgb, ch);
  for (size_t c = 0; c < 3; ++c) {
    double lo, hi;
    cv::minMaxLoc(ch[c], &lo, &hi);
    const double scale = hi > lo ? 255.0 / (hi - lo) : 1.0, offset = hi > lo ? -lo * scale : 0.0;
    for (int i = 0; i < 256; ++i)
      luts[c][i] = static_cast<uchar>(std::clamp(static_cast<int>(i * scale + offset), 0, 255));
  }
  return per_channel_lut(rgb, luts);
}

cv::Mat equalize(const cv::Mat& rgb) {
  // Pillow's ImageOps.equalize: the step skips the last non-empty bin.
  std::array<std::array<uchar, 256>, 3> luts{};
  std::vector<cv::Mat> ch;
  cv::split(rgb, ch);
  for (size_t c = 0; c < 3; ++c) {
    const auto h = histogram(ch[c]);
    int last = 255;
    while (last > 0 && h[last] == 0) --last;
    int total = 0;
    for (int v : h) total += v;
    const int step = (total - h[last]) / 255;
    int n = step / 2;
    for (int i = 0; i < 256; ++i) {
      luts[c][i] = step ? static_cast<uchar>(std::min(255, n / step)) : static_cast<uchar>(i);
      n += h[i];
    }
  }
  return per_channel_lut(rgb, luts);
}

cv::Mat posterize(const cv::Mat& rgb, int bits) {
  const uchar mask = static_cast<uchar>(~((1 << (8 - std::clamp(bits, 1, 8))) - 1));
  cv::Mat out;
  cv::bitwise_and(rgb, cv::Scalar::all(mask), out);
  return out;
}

cv::Mat solarize(const cv::Mat& rgb, int threshold) {
  std::array<std::array<uchar, 256>, 3> luts{};
  for (auto& lut : luts)
    for (int i = 0; i < 256; ++i) lut[i] = static_cast<uchar>(i < threshold ? i : 255 - i);
  return per_channel_lut(rgb, luts);
}

cv::Mat affine(const cv::Mat& rgb, double a, double b, double c, double d, double e, double f) {
  // Pillow samples at pixel centres: output centre (x+.5, y+.5) maps to input (u, v) in
  // corner coordinates, i.e. pixel index u - .5. Written as an inverse map for OpenCV.
  const cv::Matx23d map(a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5);
  cv::Mat out;
  cv::warpAffine(rgb, out, cv::Mat(map), rgb.size(), cv::INTER_LINEAR | cv::WARP_INVERSE_MAP, cv::BORDER_CONSTANT,
                 cv::Scalar::all(0));
  return out;
}

cv::Mat apply(const std::string& op, const cv::Mat& rgb, int severity, std::mt19937_64& rng) {
  const double side = rgb.cols;  // AugMix's IMAGE_SIZE: the view side
  if (op == "autocontrast") return autocontrast(rgb);
  if (op == "equalize") return equalize(rgb);
  if (op == "posterize") return posterize(rgb, 4 - int_parameter(sample_level(severity, rng), 4));
  if (op == "rotate") {
    const double degrees = int_parameter(sample_level(severity, rng), 30);
    return rotate(rgb, degrees * random_sign(rng));
  }
  if (op == "solarize") return solarize(rgb, 256 - int_parameter(sample_level(severity, rng), 256));
  if (op == "shear_x" || op == "shear_y") {
    const double level = float_parameter(sample_level(severity, rng), 0.3) * random_sign(rng);
    return op == "shear_x" ? affine(rgb, 1, level, 0, 0, 1, 0) : affine(rgb, 1, 0, 0, level, 1, 0);
  }
  if (op == "translate_x" || op == "translate_y") {
    const double level = int_parameter(sample_level(severity, rng), side / 3) * random_sign(rng);
    return op == "translate_x" ? affine(rgb, 1, 0, level, 0, 1, 0) : affine(rgb, 1, 0, 0, 0, 1, level);
  }
  throw Error("augmix: unknown operation '" + op + "'");
}

Mix draw_mix(const cv::Mat& rgb, std::mt19937_64& rng, int severity, int width) {
  Mix mix;
  // Dirichlet(1, ..., 1) = normalised Exp(1) draws; Beta(1, 1) = uniform.
  double total = 0;
  for (int i = 0; i < width; ++i) {
    mix.weights.push_back(static_cast<float>(-std::log(1.0 - seeded::uniform(rng))));
    total += mix.weights.back();
  }
  for (auto& w : mix.weights) w = static_cast<float>(w / total);
  mix.m = static_cast<float>(seeded::uniform(rng));
  const auto& ops = operation_names();
  for (int i = 0; i < width; ++i) {
    cv::Mat x = rgb.clone();
    const int depth = 1 + static_cast<int>(seeded::below(rng, 3));
    for (int k = 0; k < depth; ++k) x = apply(ops[seeded::below(rng, ops.size())], x, severity, rng);
    mix.chains.push_back(x);
  }
  return mix;
}

}  // namespace vlmadapt::augmix
