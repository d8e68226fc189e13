// Image sizes read from the file header, before any pixel is decoded. OpenCV's imdecode
// allocates whatever the header declares (up to 2^30 pixels) and cannot be asked the size
// first in OpenCV 4.6, so a 4 KB PNG declaring 20000 x 20000 pixels would take gigabytes.
//
// Limits (a vlmadapt::Error naming the file and the limit):
//   - the format must be one whose header is read here: JPEG, PNG, BMP, WebP, TIFF, PPM/PGM;
//   - at most kMaxImagePixels pixels (Pillow's decompression-bomb threshold, ~9459 x 9459);
//   - the longer side at most kMaxAspectRatio times the shorter one: CLIP's preprocessing
//     resizes the shorter side to the model resolution, so a 1 x 1,000,000 strip would
//     grow to 224 x 224,000,000 pixels before the centre crop.
#pragma once
#include <cstdint>
#include <string>

namespace vlmadapt {

constexpr uint64_t kMaxImagePixels = 89478485;  // PIL.Image.MAX_IMAGE_PIXELS
constexpr uint64_t kMaxAspectRatio = 100;

struct ImageSize {
  uint64_t width = 0, height = 0;
};

// The size the header declares; throws vlmadapt::Error naming `name` when the format is
// not one of the above or the header is truncated.
ImageSize read_image_size(const std::string& bytes, const std::string& name);
// read_image_size, then the limits above.
void check_image_size(const std::string& bytes, const std::string& name);

}  // namespace vlmadapt
