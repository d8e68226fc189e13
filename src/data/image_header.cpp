// Image header sizes (see image_header.h). Each reader follows its format's specification
// only as far as the width and height; anything it cannot find is an error, never a guess.
#include "image_header.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include <vlmadapt/core/error.h>

namespace vlmadapt {
namespace {

struct Bytes {
  const std::string& b;
  const std::string& name;
  [[noreturn]] void fail(const std::string& what) const {
    throw Error("image file '" + name + "': " + what);
  }
  void need(size_t end) const {
    if (end > b.size()) fail("truncated header");
  }
  uint64_t be(size_t at, size_t n) const {
    need(at + n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v = (v << 8) | uint8_t(b[at + k]);
    return v;
  }
  uint64_t le(size_t at, size_t n) const {
    need(at + n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(uint8_t(b[at + k])) << (8 * k);
    return v;
  }
  bool at(size_t pos, const char* magic, size_t n) const { return b.size() >= pos + n && b.compare(pos, n, magic, n) == 0; }
};

ImageSize png(const Bytes& b) { return {b.be(16, 4), b.be(20, 4)}; }  // IHDR follows the signature

ImageSize bmp(const Bytes& b) {
  if (b.le(14, 4) == 12) return {b.le(18, 2), b.le(20, 2)};  // BITMAPCOREHEADER
  // Signed 32-bit fields; a negative height means rows stored top-down.
  auto side = [&](size_t at) { return static_cast<uint64_t>(std::llabs(static_cast<int32_t>(b.le(at, 4)))); };
  return {side(18), side(22)};
}

// JPEG: walk the marker segments to the first start-of-frame (ITU T.81, B.2).
ImageSize jpeg(const Bytes& b) {
  size_t p = 2;
  while (true) {
    if (b.be(p, 1) != 0xFF) b.fail("corrupt JPEG marker");
    while (b.be(p, 1) == 0xFF) ++p;  // fill bytes
    const uint64_t marker = b.be(p, 1);
    ++p;
    // libjpeg skips FF 00 (a stuffed zero, no marker) and looks further; this walk would read
    // a length there and could land on another frame header than libjpeg's.
    if (marker == 0x00) b.fail("corrupt JPEG marker (FF 00)");
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // no length
    if (marker == 0xD9 || marker == 0xDA) b.fail("JPEG has no frame header before its scan");
    const uint64_t len = b.be(p, 2);
    if (len < 2) b.fail("corrupt JPEG segment");
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof) return {b.be(p + 5, 2), b.be(p + 3, 2)};  // P, Y (height), X (width)
    p += len;
  }
}

ImageSize webp(const Bytes& b) {
  if (b.at(12, "VP8 ", 4)) {
    if (b.be(23, 3) != 0x9D012A) b.fail("corrupt WebP VP8 frame");
    return {b.le(26, 2) & 0x3FFF, b.le(28, 2) & 0x3FFF};
  }
  if (b.at(12, "VP8L", 4)) {
    const uint64_t bits = b.le(21, 4);
    return {(bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
  }
  if (b.at(12, "VP8X", 4)) return {b.le(24, 3) + 1, b.le(27, 3) + 1};
  b.fail("unknown WebP chunk");
}

// TIFF: ImageWidth (256) and ImageLength (257) of the first IFD, one SHORT or LONG each
// (TIFF 6.0). libtiff ignores later duplicates of a tag and reads other integer types too
// (an 8-byte one from elsewhere in the file), so a second width or another type could make
// the size checked differ from the size decoded: both are refused.
ImageSize tiff(const Bytes& b) {
  const bool little = b.at(0, "II", 2);
  auto num = [&](size_t at, size_t n) { return little ? b.le(at, n) : b.be(at, n); };
  const uint64_t ifd = num(4, 4);
  const uint64_t count = num(ifd, 2);
  ImageSize s;
  for (uint64_t k = 0; k < count; ++k) {
    const size_t e = ifd + 2 + 12 * k;
    const uint64_t tag = num(e, 2), type = num(e + 2, 2);
    if (tag != 256 && tag != 257) continue;
    uint64_t& side = tag == 256 ? s.width : s.height;
    const char* name = tag == 256 ? "width" : "length";
    if (side != 0) b.fail(std::string("TIFF declares its image ") + name + " twice");
    if ((type != 3 && type != 4) || num(e + 4, 4) != 1)
      b.fail(std::string("TIFF image ") + name + " is not one SHORT or LONG");
    side = type == 3 ? num(e + 8, 2) : num(e + 8, 4);
    if (side == 0) b.fail(std::string("TIFF image ") + name + " is 0");
  }
  if (!s.width || !s.height) b.fail("TIFF has no image width or length");
  return s;
}

// PPM/PGM (P1-P6): "P6 <width> <height> ...", with # comments between the fields. Read
// as OpenCV's decoder reads it (grfmt_pxm.cpp, ReadNumber): a comment ends at '\n' or '\r',
// and the byte after a number is consumed whatever it is, so "113#1\n" is 113 then 1 there
// while a comment to the Netpbm specification. A number must therefore end in whitespace,
// or the two readings (and the size checked) could differ.
ImageSize pnm(const Bytes& b) {
  size_t p = 2;
  uint64_t v[2] = {0, 0};
  for (auto& x : v) {
    while (true) {
      b.need(p + 1);
      if (b.b[p] == '#') {
        while (p < b.b.size() && b.b[p] != '\n' && b.b[p] != '\r') ++p;
      } else if (std::isspace(static_cast<unsigned char>(b.b[p]))) {
        ++p;
      } else {
        break;
      }
    }
    if (!std::isdigit(static_cast<unsigned char>(b.b[p]))) b.fail("corrupt PPM/PGM header");
    for (int digits = 0; p < b.b.size() && std::isdigit(static_cast<unsigned char>(b.b[p])); ++p)
      if (++digits > 9) b.fail("PPM/PGM size has too many digits");
      else x = x * 10 + uint64_t(b.b[p] - '0');
    if (p < b.b.size() && !std::isspace(static_cast<unsigned char>(b.b[p])))
      b.fail("corrupt PPM/PGM header (a size not followed by whitespace)");
  }
  return {v[0], v[1]};
}

}  // namespace

ImageSize read_image_size(const std::string& bytes, const std::string& name) {
  const Bytes b{bytes, name};
  if (b.at(0, "\x89PNG\r\n\x1a\n", 8)) return png(b);
  if (b.at(0, "\xFF\xD8", 2)) return jpeg(b);
  if (b.at(0, "BM", 2)) return bmp(b);
  if (b.at(0, "RIFF", 4) && b.at(8, "WEBP", 4)) return webp(b);
  if (b.at(0, "II*\0", 4) || b.at(0, "MM\0*", 4)) return tiff(b);
  if (bytes.size() > 2 && bytes[0] == 'P' && bytes[1] >= '1' && bytes[1] <= '6') return pnm(b);
  b.fail("not a supported image format (JPEG, PNG, BMP, WebP, TIFF, PPM/PGM), so its size cannot be checked "
         "before decoding");
}

void check_image_size(const std::string& bytes, const std::string& name) {
  const ImageSize s = read_image_size(bytes, name);
  const std::string dims = std::to_string(s.width) + " x " + std::to_string(s.height);
  if (s.width == 0 || s.height == 0) throw Error("image file '" + name + "' declares an empty image (" + dims + ")");
  if (s.width > kMaxImagePixels / s.height)
    throw Error("image file '" + name + "' declares " + dims + " pixels, over the limit of " +
                std::to_string(kMaxImagePixels) + " pixels (a decompression bomb?)");
  const uint64_t longer = std::max(s.width, s.height), shorter = std::min(s.width, s.height);
  if (longer > kMaxAspectRatio * shorter)
    throw Error("image file '" + name + "' declares " + dims + " pixels, an aspect ratio over the limit of " +
                std::to_string(kMaxAspectRatio) + ":1");
}

}  // namespace vlmadapt
