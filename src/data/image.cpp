// Image decoding (OpenCV) and the reference CLIP preprocessing, reproducing Pillow 9.x
// bit for bit: libImaging/Resample.c (bicubic/bilinear), Geometry.c (nearest through the
// affine scale path), Convert.c (premultiplied alpha) and torchvision's size/crop rounding.
#include <vlmadapt/data/image.h>

#include <torch/torch.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <vector>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

namespace vlmadapt {
namespace {

// ---------------------------------------------------------------------------
// Which mode Pillow would open a file in. OpenCV alone cannot tell: it expands
// palettes, adds alpha for tRNS chunks and returns BMP palettes as colour.
// RGBa: a TIFF, which OpenCV reads through libtiff's RGBA interface, premultiplied.
enum class Sniffed { Unknown, L, L16, RGB, RGBA, RGBa, P };

uint32_t be32(const std::string& b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 24) | (uint32_t(uint8_t(b[at + 1])) << 16) |
         (uint32_t(uint8_t(b[at + 2])) << 8) | uint32_t(uint8_t(b[at + 3]));
}
uint32_t le32(const std::string& b, size_t at) {
  return uint32_t(uint8_t(b[at])) | (uint32_t(uint8_t(b[at + 1])) << 8) |
         (uint32_t(uint8_t(b[at + 2])) << 16) | (uint32_t(uint8_t(b[at + 3])) << 24);
}
uint32_t le16(const std::string& b, size_t at) {
  return uint32_t(uint8_t(b[at])) | (uint32_t(uint8_t(b[at + 1])) << 8);
}

// PngImagePlugin's _MODES table, keyed by IHDR bit depth and colour type.
Sniffed sniff_png(const std::string& b) {
  static const char kSig[] = "\x89PNG\r\n\x1a\n";
  if (b.size() < 26 || b.compare(0, 8, kSig, 8) != 0 || b.compare(12, 4, "IHDR") != 0)
    return Sniffed::Unknown;
  const int depth = uint8_t(b[24]), colour = uint8_t(b[25]);
  switch (colour) {
    case 0:
      return depth == 1 ? Sniffed::P : depth == 16 ? Sniffed::L16 : Sniffed::L;
    case 2:
      return Sniffed::RGB;  // a tRNS colour key is ignored by convert("RGB")
    case 3:
      return Sniffed::P;
    case 4:
    case 6:
      return Sniffed::RGBA;  // LA is handled as RGBA (see image.h)
    default:
      return Sniffed::Unknown;
  }
}

// BmpImagePlugin: palette images are "P" unless the palette is the identity grey ramp
// ("L", or "1" for two colours); 32-bit uncompressed BMPs are RGB (the 4th byte is padding).
Sniffed sniff_bmp(const std::string& b) {
  if (b.size() < 30 || b[0] != 'B' || b[1] != 'M') return Sniffed::Unknown;
  const uint32_t header = le32(b, 14);
  const bool core = header == 12;
  if (!core && header < 40) return Sniffed::Unknown;
  const uint32_t bits = core ? le16(b, 24) : le16(b, 28);
  if (bits == 32 && !core && b.size() >= 34 && le32(b, 30) == 0) return Sniffed::RGB;
  if (bits > 8) return Sniffed::Unknown;
  uint32_t colours = (!core && b.size() >= 50) ? le32(b, 46) : 0;
  if (colours == 0) colours = 1u << bits;
  const size_t entry = core ? 3 : 4, palette = 14 + header;
  if (colours > 65536 || palette + entry * colours > b.size()) return Sniffed::Unknown;
  for (uint32_t i = 0; i < colours; ++i) {
    const uint32_t grey = colours == 2 ? i * 255 : i;
    for (size_t c = 0; c < 3; ++c)
      if (uint8_t(b[palette + entry * i + c]) != grey) return Sniffed::P;
  }
  return colours == 2 ? Sniffed::P : Sniffed::L;  // "1" resizes like P (nearest)
}

Sniffed sniff_tiff(const std::string& b) {
  const bool tiff =
      b.size() >= 4 && (b.compare(0, 4, "II*\0", 4) == 0 || b.compare(0, 4, "MM\0*", 4) == 0);
  return tiff ? Sniffed::RGBa : Sniffed::Unknown;
}

// libtiff premultiplied with (c * a + 127) / 255, the same rounding as Pillow's MULDIV255,
// so dividing with rounding here lets the RGBA resize path premultiply back to the very
// same values. Only an unresized crop can differ (the low bits are lost for small alpha).
cv::Mat unpremultiply_rounded(cv::Mat rgba) {
  for (int y = 0; y < rgba.rows; ++y) {
    uint8_t* p = rgba.ptr<uint8_t>(y);
    for (int x = 0; x < rgba.cols; ++x, p += 4)
      if (p[3] != 0 && p[3] != 255)
        for (int c = 0; c < 3; ++c)
          p[c] = uint8_t(std::min(255u, (510u * p[c] + p[3]) / (2u * p[3])));
  }
  return rgba;
}

// OpenCV's BGR(A) 8/16-bit output -> RGB order, 8 bits except for Pillow's mode "I".
cv::Mat to_pillow_samples(const cv::Mat& raw, Sniffed sniffed, const std::string& name) {
  cv::Mat m = raw;
  if (m.depth() == CV_16U && sniffed != Sniffed::L16) {
    // Pillow's 16-bit unpackers ("RGB;16B", "LA;16B", ...) keep the high byte.
    cv::Mat high(m.size(), CV_MAKETYPE(CV_8U, m.channels()));
    const size_t n = m.total() * m.channels();
    cv::Mat src = m.isContinuous() ? m : m.clone();
    const uint16_t* s = src.ptr<uint16_t>();
    uint8_t* d = high.ptr<uint8_t>();
    for (size_t i = 0; i < n; ++i) d[i] = uint8_t(s[i] >> 8);
    m = high;
  } else if (m.depth() != CV_8U && m.depth() != CV_16U) {
    throw Error("image '" + name + "': unsupported sample type (only 8 and 16 bit)");
  }
  cv::Mat out;
  switch (m.channels()) {
    case 1:
      out = m;
      break;
    case 2: {  // grey + alpha -> RGBA with equal colour channels
      std::vector<cv::Mat> ga;
      cv::split(m, ga);
      cv::merge(std::vector<cv::Mat>{ga[0], ga[0], ga[0], ga[1]}, out);
      break;
    }
    case 3:
      cv::cvtColor(m, out, cv::COLOR_BGR2RGB);
      break;
    case 4:
      cv::cvtColor(m, out, cv::COLOR_BGRA2RGBA);
      break;
    default:
      throw Error("image '" + name + "': unsupported channel count");
  }
  return out;
}

// Grey or RGBA -> three channels (Pillow convert("RGB") drops alpha without compositing).
cv::Mat to_rgb3(const cv::Mat& m) {
  cv::Mat out;
  if (m.channels() == 4)
    cv::cvtColor(m, out, cv::COLOR_RGBA2RGB);
  else if (m.channels() == 1)
    cv::cvtColor(m, out, cv::COLOR_GRAY2RGB);
  else
    out = m;
  return out;
}

cv::Mat first_channel(const cv::Mat& m) {
  if (m.channels() == 1) return m;
  cv::Mat out;
  cv::extractChannel(m, out, 0);
  return out;
}

Image assign_mode(const cv::Mat& px, Sniffed sniffed) {
  switch (sniffed) {
    case Sniffed::L:
    case Sniffed::L16:
      return {first_channel(px), PixelMode::L};
    case Sniffed::RGB:
      return {to_rgb3(px), PixelMode::RGB};
    case Sniffed::P:
      return {to_rgb3(px), PixelMode::P};
    case Sniffed::RGBA:
      if (px.channels() == 4) return {px, PixelMode::RGBA};
      break;
    case Sniffed::RGBa:
      if (px.channels() == 4 && px.depth() == CV_8U)
        return {unpremultiply_rounded(px), PixelMode::RGBA};
      break;
    case Sniffed::Unknown:
      break;
  }
  if (px.channels() == 1) return {px, PixelMode::L};
  if (px.channels() == 4) return {px, PixelMode::RGBA};
  return {to_rgb3(px), PixelMode::RGB};
}

// ---------------------------------------------------------------------------
// Resample.c. Coefficients are normalised in double; 8-bit images use them in
// 22-bit fixed point, 32-bit ("I") images in double, each exactly as Pillow does.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
double bilinear(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;  // source range of each output sample
  std::vector<double> k;          // ksize weights per output sample
  std::vector<int32_t> fixed;     // the same in fixed point
};

// precompute_coeffs(): in0/in1 are C floats and their difference is taken in float.
Coeffs precompute(int in_size, float in0, float in1, int out_size, Resample filter) {
  double (*fn)(double) = filter == Resample::Bicubic ? bicubic : bilinear;
  const double support0 = filter == Resample::Bicubic ? 2.0 : 1.0;
  const double scale = double(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;  // antialias when shrinking
  const double support = support0 * filterscale, ss = 1.0 / filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(size_t(out_size) * c.ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const int xmin = std::max(0, int(center - support + 0.5));
    const int xmax = std::min(in_size, int(center + support + 0.5)) - xmin;
    double* k = &c.k[size_t(xx) * c.ksize];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) ww += (k[x] = fn((x + xmin - center + 0.5) * ss));
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.first[xx] = xmin;
    c.count[xx] = std::max(0, xmax);
  }
  c.fixed.resize(c.k.size());
  for (size_t i = 0; i < c.k.size(); ++i)  // normalize_coeffs_8bpc: round half away from 0
    c.fixed[i] = int32_t(c.k[i] < 0 ? -0.5 + c.k[i] * (1 << kPrecisionBits)
                                    : 0.5 + c.k[i] * (1 << kPrecisionBits));
  return c;
}

// One output sample from n taps `step` elements apart.
inline uint8_t tap(const uint8_t* p, ptrdiff_t step, const Coeffs& c, size_t at, int n) {
  int ss = 1 << (kPrecisionBits - 1);
  const int32_t* k = &c.fixed[at];
  for (int i = 0; i < n; ++i) ss += int(p[i * step]) * k[i];
  const int v = ss >> kPrecisionBits;  // clip8(): arithmetic shift, then clamp
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}
inline int32_t tap(const int32_t* p, ptrdiff_t step, const Coeffs& c, size_t at, int n) {
  double ss = 0.0;
  const double* k = &c.k[at];
  for (int i = 0; i < n; ++i) ss += p[i * step] * k[i];
  return int32_t(ss >= 0.0 ? ss + 0.5F : ss - 0.5F);  // ROUND_UP
}

// Horizontal pass over source rows [row0, row0 + rows) only.
template <typename T>
cv::Mat horizontal(const cv::Mat& src, int row0, int rows, const Coeffs& c, int xsize) {
  const int ch = src.channels();
  cv::Mat out(rows, xsize, src.type());
  for (int y = 0; y < rows; ++y) {
    const T* in = src.ptr<T>(row0 + y);
    T* o = out.ptr<T>(y);
    for (int xx = 0; xx < xsize; ++xx)
      for (int b = 0; b < ch; ++b)
        o[xx * ch + b] = tap(in + c.first[xx] * ch + b, ch, c, size_t(xx) * c.ksize, c.count[xx]);
  }
  return out;
}

// Vertical pass; `shift` maps source rows to rows of `src` (the horizontal pass's window).
template <typename T>
cv::Mat vertical(const cv::Mat& src, const Coeffs& c, int shift, int ysize) {
  const int width = src.cols * src.channels();
  const ptrdiff_t step = ptrdiff_t(src.step1());
  cv::Mat out(ysize, src.cols, src.type());
  for (int yy = 0; yy < ysize; ++yy) {
    const T* in = src.ptr<T>(c.first[yy] - shift);
    T* o = out.ptr<T>(yy);
    for (int x = 0; x < width; ++x) o[x] = tap(in + x, step, c, size_t(yy) * c.ksize, c.count[yy]);
  }
  return out;
}

// ImagingResampleInner: horizontal first, restricted to the rows the vertical pass reads.
template <typename T>
cv::Mat resample(const cv::Mat& src, cv::Size size, Resample filter, const ResizeBox& box) {
  const bool need_h = size.width != src.cols || box[0] != 0 || box[2] != size.width;
  const bool need_v = size.height != src.rows || box[1] != 0 || box[3] != size.height;
  const Coeffs vert = precompute(src.rows, box[1], box[3], size.height, filter);
  const int row0 = vert.first[0];
  const int row1 = vert.first.back() + vert.count.back();
  cv::Mat cur = src;
  int shift = 0;
  if (need_h) {
    const Coeffs hor = precompute(src.cols, box[0], box[2], size.width, filter);
    cur = horizontal<T>(src, row0, row1 - row0, hor, size.width);
    shift = row0;
  }
  if (need_v) return vertical<T>(cur, vert, shift, size.height);
  return need_h ? cur : src.clone();
}

// Geometry.c ImagingScaleAffine: the source coordinate is accumulated, not multiplied.
cv::Mat nearest(const cv::Mat& src, cv::Size size, const ResizeBox& box) {
  const double sx = double(box[2] - box[0]) / size.width;
  const double sy = double(box[3] - box[1]) / size.height;
  auto coord = [](double v) { return v < 0.0 ? -1 : int(v); };
  std::vector<int> xin(size.width);
  double xo = box[0] + sx * 0.5;
  for (int x = 0; x < size.width; ++x, xo += sx) xin[x] = coord(xo);
  const size_t px = src.elemSize();
  cv::Mat out = cv::Mat::zeros(size, src.type());  // "fill": outside the source is 0
  double yo = box[1] + sy * 0.5;
  for (int y = 0; y < size.height; ++y, yo += sy) {
    const int yi = coord(yo);
    if (yi < 0 || yi >= src.rows) continue;
    for (int x = 0; x < size.width; ++x)
      if (xin[x] >= 0 && xin[x] < src.cols)
        std::memcpy(out.ptr(y) + x * px, src.ptr(yi) + xin[x] * px, px);
  }
  return out;
}

// Convert.c rgbA2rgba / rgba2rgbA (also lA2la / la2lA, the same per channel).
cv::Mat premultiply(const cv::Mat& rgba) {
  cv::Mat out = rgba.clone();
  for (int y = 0; y < out.rows; ++y) {
    uint8_t* p = out.ptr<uint8_t>(y);
    for (int x = 0; x < out.cols; ++x, p += 4)
      for (int c = 0; c < 3; ++c) {
        const unsigned tmp = unsigned(p[c]) * p[3] + 128;  // MULDIV255
        p[c] = uint8_t(((tmp >> 8) + tmp) >> 8);
      }
  }
  return out;
}
void unpremultiply(cv::Mat& rgba) {
  for (int y = 0; y < rgba.rows; ++y) {
    uint8_t* p = rgba.ptr<uint8_t>(y);
    for (int x = 0; x < rgba.cols; ++x, p += 4) {
      const unsigned a = p[3];
      if (a == 255 || a == 0) continue;
      for (int c = 0; c < 3; ++c) p[c] = uint8_t(std::min(255u, (255u * p[c]) / a));
    }
  }
}

void check_resizable(const cv::Mat& m, PixelMode mode) {
  const bool i_mode = mode == PixelMode::L && (m.type() == CV_16UC1 || m.type() == CV_32SC1);
  const int want = mode == PixelMode::L ? 1 : mode == PixelMode::RGBA ? 4 : 3;
  if (m.empty() || (!i_mode && m.type() != CV_MAKETYPE(CV_8U, want)))
    throw Error("resize: expected a non-empty uint8 image with " + std::to_string(want) +
                " channel(s) for its mode, got type " + std::to_string(m.type()));
}

// Python-level Image.resize dispatch, then the C-level _resize dispatch.
cv::Mat resize_dispatch(const cv::Mat& src, PixelMode mode, cv::Size size, Resample filter,
                        ResizeBox box) {
  if (box == ResizeBox{}) box = {0.f, 0.f, float(src.cols), float(src.rows)};
  if (size.width < 1 || size.height < 1 || box[0] < 0 || box[1] < 0 || box[2] > src.cols ||
      box[3] > src.rows || box[2] < box[0] || box[3] < box[1])
    throw Error("resize: invalid target size or box");
  if (size == src.size() && box == ResizeBox{0.f, 0.f, float(src.cols), float(src.rows)})
    return src.clone();
  if (mode == PixelMode::P) filter = Resample::Nearest;
  if (mode == PixelMode::RGBA && filter != Resample::Nearest) {
    cv::Mat out = resize_dispatch(premultiply(src), PixelMode::RGB, size, filter, box);
    unpremultiply(out);
    return out;
  }
  // Integer box of exactly the output size: Pillow crops.
  if (box[0] == std::floor(box[0]) && box[1] == std::floor(box[1]) &&
      box[2] - box[0] == size.width && box[3] - box[1] == size.height)
    return src(cv::Rect(int(box[0]), int(box[1]), size.width, size.height)).clone();
  if (filter == Resample::Nearest) return nearest(src, size, box);
  if (src.depth() != CV_8U) {  // mode "I": 32-bit samples, double arithmetic
    cv::Mat wide;
    src.convertTo(wide, CV_32S);
    return resample<int32_t>(wide, size, filter, box);
  }
  return resample<uint8_t>(src, size, filter, box);
}

// Python's round() of k / 2.0 for an integer k >= 0: halves go to the even neighbour.
int half_round_even(int k) {
  const int half = k / 2;
  return (k % 2 == 1 && half % 2 == 1) ? half + 1 : half;
}

}  // namespace

Image decode_image(const std::string& path) {
  return decode_image_bytes(read_file(path), path);  // read_file names the path on error
}

Image decode_image_bytes(const std::string& bytes, const std::string& name) {
  if (bytes.empty()) throw Error("image file '" + name + "' is empty");
  if (bytes.size() > size_t(INT_MAX)) throw Error("image file '" + name + "' is too large");
  Sniffed sniffed = sniff_png(bytes);
  if (sniffed == Sniffed::Unknown) sniffed = sniff_bmp(bytes);
  if (sniffed == Sniffed::Unknown) sniffed = sniff_tiff(bytes);
  cv::Mat raw;
  try {
    const cv::Mat buf(1, int(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
    raw = cv::imdecode(buf, cv::IMREAD_UNCHANGED | cv::IMREAD_IGNORE_ORIENTATION);
  } catch (const cv::Exception& e) {
    throw Error("cannot decode image '" + name + "': " + e.what());
  }
  if (raw.empty())
    throw Error("cannot decode image '" + name + "': not an image format OpenCV reads");
  return assign_mode(to_pillow_samples(raw, sniffed, name), sniffed);
}

cv::Mat to_rgb(const Image& image) {
  const cv::Mat& m = image.pixels;
  if (m.empty()) throw Error("to_rgb: empty image");
  if (m.type() == CV_16UC1 || m.type() == CV_32SC1) {  // i2rgb clips mode "I" to 0..255
    cv::Mat clipped;
    m.convertTo(clipped, CV_8U);  // integer saturate_cast is exactly that clip
    return to_rgb3(clipped);
  }
  if (m.depth() != CV_8U) throw Error("to_rgb: expected 8-bit pixels");
  if (m.channels() == 3) return m.clone();
  return to_rgb3(m);
}

cv::Mat read_image(const std::string& path) { return to_rgb(decode_image(path)); }

cv::Mat pillow_resize(const cv::Mat& pixels, PixelMode mode, cv::Size size, Resample filter,
                      const ResizeBox& box) {
  check_resizable(pixels, mode);
  return resize_dispatch(pixels, mode, size, filter, box);
}

cv::Mat resize_crop(const Image& image, int n_px) {
  if (n_px < 1) throw Error("resize_crop: n_px must be positive, got " + std::to_string(n_px));
  const cv::Mat& m = image.pixels;
  check_resizable(m, image.mode);
  // torchvision Resize(int): the shorter side becomes n_px, the longer int(n_px*long/short).
  const bool portrait = m.cols <= m.rows;
  const int shorter = portrait ? m.cols : m.rows, longer = portrait ? m.rows : m.cols;
  const int scaled = int(double(n_px) * longer / shorter);
  const cv::Size size = portrait ? cv::Size(n_px, scaled) : cv::Size(scaled, n_px);
  const cv::Mat resized = resize_dispatch(m, image.mode, size, Resample::Bicubic, {});
  // CenterCrop: int(round((h - n) / 2.0)) with Python's round.
  const int top = half_round_even(size.height - n_px), left = half_round_even(size.width - n_px);
  return to_rgb({resized(cv::Rect(left, top, n_px, n_px)), image.mode});
}

cv::Mat resize_crop(const cv::Mat& pixels, int n_px) {
  const PixelMode mode = pixels.channels() == 1   ? PixelMode::L
                         : pixels.channels() == 4 ? PixelMode::RGBA
                                                  : PixelMode::RGB;
  return resize_crop(Image{pixels, mode}, n_px);
}

at::Tensor normalize(const cv::Mat& rgb, const Normalization& norm) {
  if (rgb.type() != CV_8UC3) throw Error("normalize: expected a uint8 RGB (HxWx3) image");
  at::Tensor out = torch::empty({3, rgb.rows, rgb.cols}, torch::kFloat32);
  float* dst = out.data_ptr<float>();
  const size_t plane = size_t(rgb.rows) * rgb.cols;
  for (int y = 0; y < rgb.rows; ++y) {
    const uint8_t* p = rgb.ptr<uint8_t>(y);
    for (int x = 0; x < rgb.cols; ++x)
      for (int c = 0; c < 3; ++c) {
        // ToTensor divides in float32, Normalize subtracts then divides: same roundings.
        const float v = float(p[x * 3 + c]) / 255.0f;
        dst[c * plane + size_t(y) * rgb.cols + x] = (v - norm.mean[c]) / norm.std[c];
      }
  }
  return out;
}

at::Tensor preprocess(const std::string& path, int n_px, const Normalization& norm) {
  return normalize(resize_crop(decode_image(path), n_px), norm);
}

bool is_image_path(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  static const char* const kExts[] = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"};
  return std::find(std::begin(kExts), std::end(kExts), ext) != std::end(kExts);
}

}  // namespace vlmadapt
