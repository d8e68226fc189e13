// Image decoding and the reference CLIP preprocessing, pixel-exact to Pillow:
// Resize(n_px, bicubic, shorter side) -> CenterCrop(n_px) -> RGB -> Normalize.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <opencv2/core.hpp>
#include <string>

namespace vlmadapt {

// The mode Pillow opens a file in; the reference resizes in this mode and
// converts to RGB after the crop, so Pillow's rules for each mode apply
// (RGBA is resized premultiplied, palette images with nearest neighbour).
enum class PixelMode { L, RGB, RGBA, P };

// P also stands for Pillow's bilevel mode "1" (1-bit PNG, 2-colour BMP), which Pillow
// resizes with nearest neighbour too. Grey+alpha files (Pillow's LA) are held as RGBA with
// equal colour channels: Pillow premultiplies LA exactly as RGBA, channel by channel.
struct Image {
  cv::Mat pixels;  // uint8: 1 channel (L), 3 channels RGB (RGB, P expanded), 4 channels RGBA
  PixelMode mode = PixelMode::RGB;
  // One exception: a 16-bit greyscale PNG (Pillow's 32-bit mode "I") is L with CV_16U
  // pixels (CV_32S once resized); Pillow resizes those values unclipped, and to_rgb then
  // clips them to 0..255 as Pillow's convert("RGB") does.
};

struct Normalization {
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
};

// Decodes JPEG, PNG, BMP, WebP (... whatever OpenCV reads) in the file's own mode.
// EXIF orientation is ignored, as in the reference. Throws vlmadapt::Error naming the file,
// also before decoding when the header declares more than the limits of image_header.h
// (89,478,485 pixels, aspect ratio 100:1) or a format whose size cannot be read first.
Image decode_image(const std::string& path);
// The same from bytes in memory; `name` is used in error messages.
Image decode_image_bytes(const std::string& bytes, const std::string& name);
// True when the file name has an image extension (.jpg .jpeg .png .bmp .webp .tif .tiff .ppm .pgm).
bool is_image_path(const std::string& path);
// uint8 RGB, as Pillow's convert("RGB").
cv::Mat to_rgb(const Image& image);
cv::Mat read_image(const std::string& path);

// Shorter side to n_px with Pillow's bicubic filter and rounding, then centre crop;
// returns uint8 RGB n_px x n_px. The cv::Mat overload takes 1 (L), 3 (RGB) or 4 (RGBA) channels.
cv::Mat resize_crop(const Image& image, int n_px);
cv::Mat resize_crop(const cv::Mat& pixels, int n_px);

// Pillow's filters; Image.resize forces Nearest for P images.
enum class Resample { Nearest, Bilinear, Bicubic };
// A Pillow resize box (x0, y0, x1, y1) in source pixels; may be fractional.
using ResizeBox = std::array<float, 4>;

// Pillow's Image.resize(size, filter, box) of pixels in `mode`, pixel-exact: P uses nearest,
// RGBA is resized premultiplied. Returns the same layout as the input (not yet RGB).
// An empty box (all zeros) means the whole image.
cv::Mat pillow_resize(const cv::Mat& pixels, PixelMode mode, cv::Size size, Resample filter,
                      const ResizeBox& box = {});

// uint8 RGB HxWx3 -> float [3,H,W], (x/255 - mean)/std.
at::Tensor normalize(const cv::Mat& rgb, const Normalization& norm = {});

// The whole reference transform of one file: float [3,n_px,n_px].
at::Tensor preprocess(const std::string& path, int n_px, const Normalization& norm = {});

}  // namespace vlmadapt
