// The accuracy-versus-shots plot of `report`. The figure is laid out once and drawn
// through a small Painter interface with two back ends, hand-written SVG and OpenCV
// (PNG), so both files always show the same picture.
#include <vlmadapt/report/report.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>

#include <vlmadapt/core/error.h>

#include "report/report_text.h"

namespace vlmadapt::report {
using text::xml_escape;
namespace {

struct Rgb {
  int r, g, b;
};
const Rgb kBlack{0, 0, 0}, kAxis{51, 51, 51}, kGrid{224, 224, 224}, kWhite{255, 255, 255};
// matplotlib's tab10: distinct and readable for up to ten methods, then it cycles.
const Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},  {148, 103, 189},
                        {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};

enum class Anchor { Start, Middle, End };
struct Pt {
  double x, y;
};

class Painter {
 public:
  virtual ~Painter() = default;
  virtual void polyline(const std::vector<Pt>& pts, Rgb color, double width, bool dashed) = 0;
  virtual void line(Pt a, Pt b, Rgb color, double width, bool dashed = false) = 0;
  virtual void circle(Pt c, double radius, Rgb fill) = 0;
  // `at` is the baseline point; vertical text reads bottom to top, centred on `at`.
  virtual void text(Pt at, const std::string& s, double px, Anchor anchor, bool vertical = false) = 0;
};

// ---- layout ----------------------------------------------------------------

struct Point {
  double shots, mean, std;
};
struct Series {
  std::string name;
  std::vector<Point> curve;   // shots > 0, ascending
  std::optional<Point> zero;  // the 0-shot result, a dashed line
};

struct Layout {
  double left = 80, right = kPlotWidth - 230, top = 60, bottom = kPlotHeight - 70;
  bool log2 = true;
  double xlo = 0, xhi = 1;
  std::vector<int> xticks;
  double ylo = 0, yhi = 100, ystep = 10;
  std::vector<Series> series;
  std::string title, ylabel;

  double pos(double shots) const { return log2 ? std::log2(shots) : shots; }
  double x(double shots) const { return left + (pos(shots) - xlo) / (xhi - xlo) * (right - left); }
  double y(double value) const { return bottom - (value - ylo) / (yhi - ylo) * (bottom - top); }
};

bool power_of_two(int k) { return k > 0 && (k & (k - 1)) == 0; }

// 1, 2, 2.5 or 5 times a power of ten, near range/5: about five to eight gridlines.
double nice_step(double range) {
  const double raw = range / 5, mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0})
    if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

void fit_x(Layout& L, const std::set<int>& shots) {
  L.log2 = std::all_of(shots.begin(), shots.end(), power_of_two);
  L.xticks.assign(shots.begin(), shots.end());
  if (shots.empty()) return;  // zero-shot only: dashed lines, no shots axis ticks
  L.xlo = L.pos(*shots.begin());
  L.xhi = L.pos(*shots.rbegin());
  const double pad = L.xhi > L.xlo ? 0.06 * (L.xhi - L.xlo) : 1.0;  // keep markers off the frame
  L.xlo -= pad;
  L.xhi += pad;
}

void fit_y(Layout& L, double lo, double hi) {
  if (hi - lo < 1e-9) lo -= 1, hi += 1;
  // Pad to keep markers and error-bar caps off the frame, but never past 0 or 100 %.
  const double pad = 0.04 * (hi - lo);
  lo = lo >= 0 ? std::max(0.0, lo - pad) : lo - pad;
  hi = hi <= 100 ? std::min(100.0, hi + pad) : hi + pad;
  L.ystep = nice_step(hi - lo);
  L.ylo = std::floor(lo / L.ystep) * L.ystep;
  L.yhi = std::ceil(hi / L.ystep) * L.ystep;
  if (L.yhi - L.ylo < 1e-9) L.yhi = L.ylo + L.ystep;
}

Layout layout(const std::vector<Cell>& cells, const std::string& dataset, const std::string& metric) {
  Layout L;
  std::map<std::string, Series> by_method;
  std::set<int> shots;
  double lo = 1e300, hi = -1e300;
  for (const auto& c : cells) {
    if (c.dataset != dataset || c.metric != metric) continue;
    Series& s = by_method[c.method];
    s.name = c.method;
    const Point p{double(c.shots), c.mean, c.std};
    if (c.shots == 0) s.zero = p;
    else s.curve.push_back(p), shots.insert(c.shots);
    lo = std::min(lo, c.mean - c.std);
    hi = std::max(hi, c.mean + c.std);
  }
  if (by_method.empty()) throw Error("report plot: no results for dataset \"" + dataset + "\", metric \"" + metric + "\"");
  for (auto& [name, s] : by_method) {
    std::sort(s.curve.begin(), s.curve.end(), [](const Point& a, const Point& b) { return a.shots < b.shots; });
    L.series.push_back(s);
  }
  fit_x(L, shots);
  fit_y(L, lo, hi);
  L.title = dataset + ": " + metric_title(metric) + " vs shots";
  L.ylabel = metric_title(metric);
  return L;
}

// ---- drawing (shared by both back ends) ---------------------------------------

std::string tick_label(double v, double step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, step < 1 ? "%.1f" : "%.0f", v);
  return buf;
}

void draw_axes(Painter& p, const Layout& L) {
  const int n = static_cast<int>(std::lround((L.yhi - L.ylo) / L.ystep));
  for (int i = 0; i <= n; ++i) {
    const double v = L.ylo + i * L.ystep, y = L.y(v);
    p.line({L.left, y}, {L.right, y}, kGrid, 1);
    p.line({L.left - 5, y}, {L.left, y}, kAxis, 1);
    p.text({L.left - 9, y + 4}, tick_label(v, L.ystep), 12, Anchor::End);
  }
  for (int k : L.xticks) {
    const double x = L.x(k);
    p.line({x, L.top}, {x, L.bottom}, kGrid, 1);
    p.line({x, L.bottom}, {x, L.bottom + 5}, kAxis, 1);
    p.text({x, L.bottom + 20}, std::to_string(k), 12, Anchor::Middle);
  }
  p.line({L.left, L.top}, {L.left, L.bottom}, kAxis, 1.5);
  p.line({L.left, L.bottom}, {L.right, L.bottom}, kAxis, 1.5);
  p.text({(L.left + L.right) / 2, L.bottom + 48},
         L.log2 ? "shots per class (K, log2 scale)" : "shots per class (K)", 13, Anchor::Middle);
  p.text({L.left - 52, (L.top + L.bottom) / 2}, L.ylabel, 13, Anchor::Middle, true);
  p.text({kPlotWidth / 2.0, 32}, L.title, 17, Anchor::Middle);
}

void draw_series(Painter& p, const Layout& L, const Series& s, Rgb color) {
  if (s.zero) p.polyline({{L.left, L.y(s.zero->mean)}, {L.right, L.y(s.zero->mean)}}, color, 2, true);
  if (s.curve.empty()) return;
  std::vector<Pt> pts;
  for (const auto& q : s.curve) pts.push_back({L.x(q.shots), L.y(q.mean)});
  p.polyline(pts, color, 2, false);
  for (size_t i = 0; i < pts.size(); ++i) {
    const double sd = s.curve[i].std, x = pts[i].x;
    if (sd > 0) {  // error bar of one standard deviation, with caps
      const double y0 = L.y(s.curve[i].mean - sd), y1 = L.y(s.curve[i].mean + sd);
      p.line({x, y0}, {x, y1}, color, 1.5);
      p.line({x - 4, y0}, {x + 4, y0}, color, 1.5);
      p.line({x - 4, y1}, {x + 4, y1}, color, 1.5);
    }
    p.circle(pts[i], 4, color);
  }
}

std::string legend_name(const Series& s) {
  std::string name = s.name;
  if (name.size() > 24) name = name.substr(0, 22) + "..";  // keep the legend inside the canvas
  return s.curve.empty() ? name + " (0-shot)" : name;
}

void draw_legend(Painter& p, const Layout& L) {
  const double x = L.right + 18;
  for (size_t i = 0; i < L.series.size(); ++i) {
    const Series& s = L.series[i];
    const Rgb color = kPalette[i % std::size(kPalette)];
    const double y = L.top + 10 + 22.0 * static_cast<double>(i);
    // A <line>, not a <polyline>: the SVG holds exactly one polyline per data line.
    p.line({x, y}, {x + 26, y}, color, 2, s.curve.empty());
    if (!s.curve.empty()) p.circle({x + 13, y}, 4, color);
    p.text({x + 34, y + 4}, legend_name(s), 12, Anchor::Start);
  }
}

void draw(Painter& p, const Layout& L) {
  draw_axes(p, L);
  for (size_t i = 0; i < L.series.size(); ++i) draw_series(p, L, L.series[i], kPalette[i % std::size(kPalette)]);
  draw_legend(p, L);
}

// ---- SVG back end --------------------------------------------------------------

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string hex(Rgb c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c.r, c.g, c.b);
  return buf;
}


class SvgPainter : public Painter {
 public:
  std::string svg;
  void polyline(const std::vector<Pt>& pts, Rgb c, double w, bool dashed) override {
    svg += "<polyline fill=\"none\" stroke=\"" + hex(c) + "\" stroke-width=\"" + num(w) + "\"" +
           (dashed ? " stroke-dasharray=\"8,5\"" : "") + " points=\"";
    for (size_t i = 0; i < pts.size(); ++i) svg += (i ? " " : "") + num(pts[i].x) + "," + num(pts[i].y);
    svg += "\"/>\n";
  }
  void line(Pt a, Pt b, Rgb c, double w, bool dashed) override {
    svg += "<line x1=\"" + num(a.x) + "\" y1=\"" + num(a.y) + "\" x2=\"" + num(b.x) + "\" y2=\"" + num(b.y) +
           "\" stroke=\"" + hex(c) + "\" stroke-width=\"" + num(w) + "\"" +
           (dashed ? " stroke-dasharray=\"8,5\"" : "") + "/>\n";
  }
  void circle(Pt c, double r, Rgb fill) override {
    svg += "<circle cx=\"" + num(c.x) + "\" cy=\"" + num(c.y) + "\" r=\"" + num(r) + "\" fill=\"" + hex(fill) +
           "\" stroke=\"white\" stroke-width=\"1\"/>\n";
  }
  void text(Pt at, const std::string& s, double px, Anchor a, bool vertical) override {
    const char* anchor = a == Anchor::Start ? "start" : a == Anchor::Middle ? "middle" : "end";
    svg += "<text x=\"" + num(at.x) + "\" y=\"" + num(at.y) + "\" font-size=\"" + num(px) + "\" text-anchor=\"" +
           anchor + "\"" + (vertical ? " transform=\"rotate(-90 " + num(at.x) + " " + num(at.y) + ")\"" : "") +
           ">" + xml_escape(s) + "</text>\n";
  }
};

// ---- OpenCV back end -----------------------------------------------------------

constexpr int kShift = 4;  // sub-pixel coordinates for anti-aliased drawing
cv::Point fixed(Pt p) { return {int(std::lround(p.x * (1 << kShift))), int(std::lround(p.y * (1 << kShift)))}; }
cv::Scalar bgr(Rgb c) { return {double(c.b), double(c.g), double(c.r)}; }
double font_scale(double px) { return px / 30.0; }  // Hershey simplex: scale 1 is ~22 px cap height

class CvPainter : public Painter {
 public:
  cv::Mat img{kPlotHeight, kPlotWidth, CV_8UC3, cv::Scalar(255, 255, 255)};
  void polyline(const std::vector<Pt>& pts, Rgb c, double w, bool dashed) override {
    for (size_t i = 1; i < pts.size(); ++i) line(pts[i - 1], pts[i], c, w, dashed);
  }
  void line(Pt a, Pt b, Rgb c, double w, bool dashed) override {
    if (dashed) return dash(a, b, c, w);
    cv::line(img, fixed(a), fixed(b), bgr(c), std::max(1, int(std::lround(w))), cv::LINE_AA, kShift);
  }
  void circle(Pt c, double r, Rgb fill) override {
    cv::circle(img, fixed(c), int(std::lround((r + 1) * (1 << kShift))), bgr(kWhite), cv::FILLED, cv::LINE_AA, kShift);
    cv::circle(img, fixed(c), int(std::lround(r * (1 << kShift))), bgr(fill), cv::FILLED, cv::LINE_AA, kShift);
  }
  void text(Pt at, const std::string& s, double px, Anchor a, bool vertical) override {
    const double scale = font_scale(px);
    const int thickness = px >= 16 ? 2 : 1;
    int base = 0;
    const cv::Size size = cv::getTextSize(s, cv::FONT_HERSHEY_SIMPLEX, scale, thickness, &base);
    if (vertical) return vertical_text(at, s, scale, thickness, size, base);
    const double dx = a == Anchor::Start ? 0 : a == Anchor::Middle ? size.width / 2.0 : size.width;
    cv::putText(img, s, {int(std::lround(at.x - dx)), int(std::lround(at.y))}, cv::FONT_HERSHEY_SIMPLEX, scale,
                bgr(kBlack), thickness, cv::LINE_AA);
  }

 private:
  void dash(Pt a, Pt b, Rgb c, double w) {
    const double len = std::hypot(b.x - a.x, b.y - a.y), on = 8, off = 5;
    if (len <= 0) return;
    for (double t = 0; t < len; t += on + off) {
      const double t1 = std::min(len, t + on);
      line({a.x + (b.x - a.x) * t / len, a.y + (b.y - a.y) * t / len},
           {a.x + (b.x - a.x) * t1 / len, a.y + (b.y - a.y) * t1 / len}, c, w, false);
    }
  }
  // putText cannot rotate: draw on a strip, turn it a quarter left, and paste it.
  void vertical_text(Pt at, const std::string& s, double scale, int thickness, cv::Size size, int base) {
    cv::Mat strip(size.height + base + 4, size.width + 4, CV_8UC3, cv::Scalar(255, 255, 255));
    cv::putText(strip, s, {2, size.height + 2}, cv::FONT_HERSHEY_SIMPLEX, scale, bgr(kBlack), thickness, cv::LINE_AA);
    cv::rotate(strip, strip, cv::ROTATE_90_COUNTERCLOCKWISE);
    cv::Rect roi(int(std::lround(at.x)) - strip.cols / 2, int(std::lround(at.y)) - strip.rows / 2, strip.cols,
                 strip.rows);
    roi &= cv::Rect(0, 0, img.cols, img.rows);
    if (roi.area() > 0) strip(cv::Rect(0, 0, roi.width, roi.height)).copyTo(img(roi));
  }
};

}  // namespace

std::string plot_svg(const std::vector<Cell>& cells, const std::string& dataset, const std::string& metric) {
  const Layout L = layout(cells, dataset, metric);
  SvgPainter p;
  p.svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
          std::to_string(kPlotWidth) + "\" height=\"" + std::to_string(kPlotHeight) + "\" viewBox=\"0 0 " +
          std::to_string(kPlotWidth) + " " + std::to_string(kPlotHeight) +
          "\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n<title>" + xml_escape(L.title) +
          "</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  draw(p, L);
  return p.svg + "</svg>\n";
}

std::string plot_png(const std::vector<Cell>& cells, const std::string& dataset, const std::string& metric) {
  const Layout L = layout(cells, dataset, metric);
  CvPainter p;
  draw(p, L);
  std::vector<uchar> png;
  if (!cv::imencode(".png", p.img, png)) throw Error("report plot: PNG encoding failed for \"" + dataset + "\"");
  return std::string(png.begin(), png.end());
}

}  // namespace vlmadapt::report
