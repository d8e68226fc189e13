#include <vlmadapt/data/corruption.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <array>
#include <random>

#include <vlmadapt/core/error.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace {

using Corrupter = cv::Mat (*)(const cv::Mat& x, int s, std::mt19937_64& rng);  // x: float RGB in [0,1]

double pick(const std::array<double, 5>& c, int s) { return c[static_cast<size_t>(s - 1)]; }

cv::Mat gaussian_noise(const cv::Mat& x, int s, std::mt19937_64& rng) {
  const double sd = pick({0.08, 0.12, 0.18, 0.26, 0.38}, s);
  std::normal_distribution<float> n(0.f, static_cast<float>(sd));
  cv::Mat out = x.clone();
  for (auto it = out.begin<float>(); it != out.end<float>(); ++it) *it += n(rng);
  return out;
}

cv::Mat shot_noise(const cv::Mat& x, int s, std::mt19937_64& rng) {
  const double c = pick({60, 25, 12, 5, 3}, s);
  cv::Mat out = x.clone();
  for (auto it = out.begin<float>(); it != out.end<float>(); ++it) {
    std::poisson_distribution<int> p(std::max(0.0, static_cast<double>(*it) * c));
    *it = static_cast<float>(p(rng) / c);
  }
  return out;
}

cv::Mat impulse_noise(const cv::Mat& x, int s, std::mt19937_64& rng) {
  const double amount = pick({0.03, 0.06, 0.09, 0.17, 0.27}, s);
  cv::Mat out = x.clone();
  // salt and pepper in equal parts, per value (as skimage's random_noise on the array)
  for (auto it = out.begin<float>(); it != out.end<float>(); ++it) {
    const double u = seeded::uniform(rng);
    if (u < amount / 2) *it = 0.f;
    else if (u < amount) *it = 1.f;
  }
  return out;
}

cv::Mat defocus_blur(const cv::Mat& x, int s, std::mt19937_64&) {
  static const std::array<std::pair<double, double>, 5> c = {{{3, 0.1}, {4, 0.5}, {6, 0.5}, {8, 0.5}, {10, 0.5}}};
  const double scale = std::min(x.rows, x.cols) / 224.0;
  const double radius = std::max(1.0, c[s - 1].first * scale), alias = c[s - 1].second * std::max(scale, 0.25);
  const int r = static_cast<int>(std::ceil(radius));
  cv::Mat disk = cv::Mat::zeros(2 * r + 1, 2 * r + 1, CV_32F);
  for (int i = -r; i <= r; ++i)
    for (int j = -r; j <= r; ++j)
      if (i * i + j * j <= radius * radius) disk.at<float>(i + r, j + r) = 1.f;
  disk /= cv::sum(disk)[0];
  cv::GaussianBlur(disk, disk, {0, 0}, alias);
  cv::Mat out;
  cv::filter2D(x, out, -1, disk, {-1, -1}, 0, cv::BORDER_REFLECT);
  return out;
}

cv::Mat contrast(const cv::Mat& x, int s, std::mt19937_64&) {
  const double c = pick({0.4, 0.3, 0.2, 0.1, 0.05}, s);
  const cv::Scalar m = cv::mean(x);
  const double mean = (m[0] + m[1] + m[2]) / 3;  // over all pixels and channels, as ImageNet-C
  cv::Mat out;
  x.convertTo(out, CV_32F, c, mean * (1 - c));
  return out;
}

cv::Mat brightness(const cv::Mat& x, int s, std::mt19937_64&) {
  const double c = pick({0.1, 0.2, 0.3, 0.4, 0.5}, s);
  cv::Mat hsv;
  cv::cvtColor(x, hsv, cv::COLOR_RGB2HSV);
  std::vector<cv::Mat> ch;
  cv::split(hsv, ch);
  ch[2] = cv::min(cv::max(ch[2] + c, 0.0), 1.0);
  cv::merge(ch, hsv);
  cv::Mat out;
  cv::cvtColor(hsv, out, cv::COLOR_HSV2RGB);
  return out;
}

cv::Mat pixelate(const cv::Mat& x, int s, std::mt19937_64&) {
  const double c = pick({0.6, 0.5, 0.4, 0.3, 0.25}, s);
  cv::Mat small, out;
  cv::resize(x, small, {std::max(1, static_cast<int>(x.cols * c)), std::max(1, static_cast<int>(x.rows * c))}, 0, 0, cv::INTER_AREA);
  cv::resize(small, out, x.size(), 0, 0, cv::INTER_NEAREST);
  return out;
}

cv::Mat jpeg_compression(const cv::Mat& x, int s, std::mt19937_64&) {
  const int quality = static_cast<int>(pick({25, 18, 15, 10, 7}, s));
  cv::Mat u8, bgr;
  x.convertTo(u8, CV_8U, 255.0);
  cv::cvtColor(u8, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> buf;
  cv::imencode(".jpg", bgr, buf, {cv::IMWRITE_JPEG_QUALITY, quality});
  cv::Mat decoded = cv::imdecode(buf, cv::IMREAD_COLOR), out;
  cv::cvtColor(decoded, decoded, cv::COLOR_BGR2RGB);
  decoded.convertTo(out, CV_32F, 1 / 255.0);
  return out;
}

const std::vector<std::pair<std::string, Corrupter>>& table() {
  static const std::vector<std::pair<std::string, Corrupter>> t = {
      {"gaussian_noise", gaussian_noise}, {"shot_noise", shot_noise}, {"impulse_noise", impulse_noise},
      {"defocus_blur", defocus_blur},     {"contrast", contrast},     {"brightness", brightness},
      {"pixelate", pixelate},             {"jpeg_compression", jpeg_compression}};
  return t;
}

}  // namespace

const std::vector<std::string>& corruption_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& [name, f] : table()) n.push_back(name);
    return n;
  }();
  return names;
}

cv::Mat corrupt(const cv::Mat& in, const std::string& name, int severity, uint64_t seed) {
  if (severity < 1 || severity > 5)
    throw Error("data.severity: expected 1 to 5, got " + std::to_string(severity));
  Corrupter f = nullptr;
  for (const auto& [n, fn] : table())
    if (n == name) f = fn;
  if (!f) {
    std::string known;
    for (const auto& n : corruption_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("data.corruption: unknown corruption '" + name + "'; known: " + known);
  }
  cv::Mat rgb = in;
  if (in.channels() == 1) cv::cvtColor(in, rgb, cv::COLOR_GRAY2RGB);
  if (in.channels() == 4) cv::cvtColor(in, rgb, cv::COLOR_RGBA2RGB);
  cv::Mat x;
  rgb.convertTo(x, CV_32FC3, 1 / 255.0);
  std::mt19937_64 rng(seed);
  cv::Mat y = f(x, severity, rng), out;
  y.convertTo(out, CV_8UC3, 255.0);  // saturating: clips to [0,255] with rounding
  return out;
}

Dataset with_corruption(Dataset dataset, const std::string& name, int severity, uint64_t seed) {
  corrupt(cv::Mat(4, 4, CV_8UC3, cv::Scalar(128, 128, 128)), name, severity, 0);  // validate early
  auto load = dataset.load;
  dataset.load = [load, name, severity, seed](const std::string& ref) {
    Image img = load(ref);
    return Image{corrupt(img.pixels, name, severity, seeded::mix(seeded::hash_text(ref), seed, severity)), PixelMode::RGB};
  };
  dataset.name += "+" + name + std::to_string(severity);
  return dataset;
}

}  // namespace vlmadapt
