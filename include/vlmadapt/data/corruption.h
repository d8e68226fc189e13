// ImageNet-C style corruptions (Hendrycks & Dietterich 2019), the shifted test domains
// for test-time adaptation: gaussian_noise, shot_noise, impulse_noise, defocus_blur,
// contrast, brightness, pixelate, jpeg_compression, each at severity 1..5 with the
// ImageNet-C constants. Spatial sizes (the defocus radius) scale with the image side
// relative to ImageNet-C's 224 pixels, so a small image gets a comparable blur.
// Every draw is seeded by the image's reference: the same image always gets the same
// corruption.
#pragma once
#include <string>
#include <vector>

#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/image.h>

namespace vlmadapt {

const std::vector<std::string>& corruption_names();

// uint8 RGB (or L/RGBA, converted to RGB first) -> corrupted uint8 RGB. Throws
// vlmadapt::Error naming the corruption for an unknown name or a severity outside 1..5.
cv::Mat corrupt(const cv::Mat& rgb, const std::string& name, int severity, uint64_t seed);

// The dataset read through a corruption: its loader corrupts each image, seeded by
// the item reference and `seed`; its name records the corruption (feature-cache keys).
Dataset with_corruption(Dataset dataset, const std::string& name, int severity, uint64_t seed = 0);

}  // namespace vlmadapt
