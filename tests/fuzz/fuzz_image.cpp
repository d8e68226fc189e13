// Image decoding (src/data/image.cpp, image_header.cpp: the header's size checked before
// OpenCV decodes, then Pillow's modes) and CLIP preprocessing on arbitrary bytes.
#include <vlmadapt/data/image.h>

#include <algorithm>

#include "data/image_header.h"
#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes = fuzz::bytes(data, size);
  fuzz::expect_only_errors([&] {
    // Images up to the limit are legitimate but take long to decode; the fuzzer looks for
    // what gets past the limits, so only small declared sizes are decoded.
    const ImageSize declared = read_image_size(bytes, "fuzz.img");
    if (declared.height > 0 && declared.width > (uint64_t(1) << 20) / declared.height) {
      check_image_size(bytes, "fuzz.img");
      return;
    }
    const Image image = decode_image_bytes(bytes, "fuzz.img");
    // The promise of the header check: what OpenCV decoded is within the limits too.
    const uint64_t w = image.pixels.cols, h = image.pixels.rows;
    fuzz::require(w > 0 && h > 0 && w * h <= kMaxImagePixels, "decoded pixels within the limit");
    fuzz::require(std::max(w, h) <= kMaxAspectRatio * std::min(w, h), "decoded aspect ratio within the limit");
    to_rgb(image);
    normalize(resize_crop(image, 16));
  });
  return 0;
}
