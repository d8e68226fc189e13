// The test-time adaptation part of `vlmadapt report`: a table of accuracy over stream
// orders, calibration and cost per run, reliability diagrams, and the running accuracy of
// online methods along the stream beside zero-shot's. Plots are plain SVG.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include <vlmadapt/core/fs.h>
#include <vlmadapt/report/report.h>

#include "report/report_text.h"

namespace vlmadapt::report {
using text::file_stem;
using text::fmt;
using text::xml_escape;
namespace fs = std::filesystem;
namespace {




std::string label_of(const Run& r) { return r.method + "/" + r.recipe; }

// A square plot area with axes in percent (0-100 on y) and an x range.
class Svg {
 public:
  static constexpr double kW = 740, kH = 480, kLeft = 70, kRight = 270, kTop = 40, kBottom = 60;
  Svg(const std::string& title, const std::string& x_title, const std::string& y_title, double x_max)
      : x_max_(x_max) {
    out_ = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", kW) + "\" height=\"" + fmt("%.0f", kH) +
           "\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    text(kW / 2 - kRight / 2, 24, title, "middle", 15);
    text(kLeft + width() / 2, kH - 15, x_title, "middle");
    out_ += "<text transform=\"translate(18," + fmt("%.1f", kTop + height() / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
            xml_escape(y_title) + "</text>\n";
    for (int k = 0; k <= 5; ++k) {
      const double y = 20.0 * k;
      line(0, y, x_max, y, "#dddddd");
      text(kLeft - 8, py(y) + 4, fmt("%.0f", y), "end");
      const double x = x_max * k / 5;
      text(px(x), kTop + height() + 18, fmt(x_max > 10 ? "%.0f" : "%.1f", x), "middle");
    }
    out_ += "<rect x=\"" + fmt("%.1f", kLeft) + "\" y=\"" + fmt("%.1f", kTop) + "\" width=\"" + fmt("%.1f", width()) +
            "\" height=\"" + fmt("%.1f", height()) + "\" fill=\"none\" stroke=\"black\"/>\n";
  }
  double px(double x) const { return kLeft + width() * x / x_max_; }
  double py(double y) const { return kTop + height() * (1 - y / 100.0); }
  void line(double x0, double y0, double x1, double y1, const std::string& color, const std::string& dash = "") {
    out_ += "<line x1=\"" + fmt("%.1f", px(x0)) + "\" y1=\"" + fmt("%.1f", py(y0)) + "\" x2=\"" + fmt("%.1f", px(x1)) +
            "\" y2=\"" + fmt("%.1f", py(y1)) + "\" stroke=\"" + color + "\"" +
            (dash.empty() ? "" : " stroke-dasharray=\"" + dash + "\"") + "/>\n";
  }
  void bar(double x0, double x1, double y, const std::string& color) {
    out_ += "<rect x=\"" + fmt("%.1f", px(x0)) + "\" y=\"" + fmt("%.1f", py(y)) + "\" width=\"" +
            fmt("%.1f", px(x1) - px(x0)) + "\" height=\"" + fmt("%.1f", py(0) - py(y)) + "\" fill=\"" + color +
            "\" stroke=\"white\"/>\n";
  }
  void polyline(const std::vector<std::pair<double, double>>& pts, const std::string& color, const std::string& dash) {
    out_ += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"" + color + "\"" +
            (dash.empty() ? "" : " stroke-dasharray=\"" + dash + "\"") + " points=\"";
    for (const auto& [x, y] : pts) out_ += fmt("%.1f", px(x)) + "," + fmt("%.1f", py(y)) + " ";
    out_ += "\"/>\n";
  }
  void legend(int row, const std::string& name, const std::string& color, const std::string& dash) {
    const double y = kTop + 14 + 18 * row, x = kW - kRight + 12;
    out_ += "<line x1=\"" + fmt("%.1f", x) + "\" y1=\"" + fmt("%.1f", y - 4) + "\" x2=\"" + fmt("%.1f", x + 22) +
            "\" y2=\"" + fmt("%.1f", y - 4) + "\" stroke-width=\"2\" stroke=\"" + color + "\"" +
            (dash.empty() ? "" : " stroke-dasharray=\"" + dash + "\"") + "/>\n";
    text(x + 28, y, name, "start", 11);
  }
  void text(double x, double y, const std::string& s, const char* anchor = "start", int size = 13) {
    out_ += "<text x=\"" + fmt("%.1f", x) + "\" y=\"" + fmt("%.1f", y) + "\" text-anchor=\"" + anchor +
            "\" font-size=\"" + std::to_string(size) + "\">" + xml_escape(s) + "</text>\n";
  }
  std::string done() { return out_ + "</svg>\n"; }

 private:
  static double width() { return kW - kLeft - kRight; }
  static double height() { return kH - kTop - kBottom; }
  double x_max_;
  std::string out_;
};

const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

bool adapts(const Run& r) { return r.stream && r.stream->adaptation != "none"; }

// Datasets with a test-time adaptation run; their zero-shot runs are its baselines.
std::vector<std::string> datasets_with_streams(const std::vector<Run>& runs) {
  std::vector<std::string> out;
  for (const auto& r : runs)
    if (adapts(r) && std::find(out.begin(), out.end(), r.dataset) == out.end()) out.push_back(r.dataset);
  return out;
}

bool in_tta_table(const Run& r, const std::string& dataset) {
  return r.dataset == dataset && r.stream && (adapts(r) || r.shots == 0);
}

}  // namespace

std::string tta_markdown(const std::vector<Run>& runs) {
  std::string out;
  for (const auto& dataset : datasets_with_streams(runs)) {
    out += "\n## " + dataset + ": test-time adaptation\n\n"
           "Top-1 is the mean over stream orders, tail the mean of the worst 10% of them (at least one); "
           "ECE in 15 bins; seconds per image and peak resident memory of the evaluation.\n\n"
           "| run | adaptation | order | orders | top-1 % | std | tail % | ECE % | s / image | peak MB |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : runs) {
      if (!in_tta_table(r, dataset)) continue;
      const auto& s = *r.stream;
      out += "| " + label_of(r) + " | " + s.adaptation + " | " + s.order + " | " + std::to_string(s.runs) + " | " +
             fmt("%.1f", s.top1) + " | " + fmt("%.2f", s.top1_std) + " | " + fmt("%.1f", s.tail_top1) + " | " +
             fmt("%.1f", s.ece) + " | " + fmt("%.3f", s.seconds_per_image) + " | " + fmt("%.0f", s.peak_memory_mb) + " |\n";
    }
  }
  return out;
}

std::string reliability_svg(const Run& run) {
  Svg svg("reliability: " + label_of(run), "confidence (%)", "accuracy (%)", 100);
  if (run.stream) {
    const auto& s = *run.stream;
    const double bins = static_cast<double>(s.bin_count.size());
    for (size_t b = 0; b < s.bin_count.size(); ++b)
      if (s.bin_count[b] > 0) svg.bar(100.0 * b / bins, 100.0 * (b + 1) / bins, s.bin_accuracy[b], kColors[0]);
    svg.line(0, 0, 100, 100, "#555555", "5,4");
    svg.legend(0, "accuracy per bin", kColors[0], "");
    svg.legend(1, "perfect calibration", "#555555", "5,4");
    svg.legend(2, "ECE " + fmt("%.1f", s.ece) + "%", "white", "");
  }
  return svg.done();
}

std::string running_accuracy_svg(const std::vector<Run>& runs, const std::string& dataset, const std::string& order) {
  std::vector<const Run*> shown;
  double length = 1;
  for (const auto& r : runs) {
    if (r.dataset != dataset || !r.stream || r.stream->order != order || r.stream->positions.empty()) continue;
    if (r.stream->adaptation != "online" && r.method != "zeroshot") continue;
    shown.push_back(&r);
    length = std::max(length, static_cast<double>(r.stream->positions.back()));
  }
  Svg svg("running top-1 along the stream: " + dataset + ", " + order, "images seen", "top-1 so far (%)", length);
  int row = 0;
  for (const Run* r : shown) {
    std::vector<std::pair<double, double>> pts;
    for (size_t i = 0; i < r->stream->positions.size(); ++i)
      pts.emplace_back(static_cast<double>(r->stream->positions[i]), r->stream->running_top1[i]);
    const bool zeroshot = r->method == "zeroshot";
    const std::string color = zeroshot ? "#000000" : kColors[row % 8];
    svg.polyline(pts, color, zeroshot ? "6,4" : "");
    svg.legend(row++, label_of(*r), color, zeroshot ? "6,4" : "");
  }
  return svg.done();
}

std::vector<std::string> write_tta_report(const std::vector<Run>& runs, const std::string& out_dir) {
  std::vector<std::string> written;
  auto put = [&](const std::string& name, const std::string& data) {
    const std::string path = (fs::path(out_dir) / name).string();
    write_file_atomic(path, data);
    written.push_back(path);
  };
  const std::string table = tta_markdown(runs);
  if (table.empty()) return written;
  put("tta.md", "# Test-time adaptation\n" + table);
  std::set<std::pair<std::string, std::string>> streams;
  const auto datasets = datasets_with_streams(runs);
  for (const auto& r : runs) {
    if (std::find(datasets.begin(), datasets.end(), r.dataset) == datasets.end() || !in_tta_table(r, r.dataset)) continue;
    put("reliability_" + file_stem(r.dataset) + "_" + file_stem(r.method) + "_" + file_stem(r.recipe) + ".svg", reliability_svg(r));
    if (r.stream->adaptation == "online") streams.insert({r.dataset, r.stream->order});
  }
  for (const auto& [dataset, order] : streams)
    put("running_" + file_stem(dataset) + "_" + file_stem(order) + ".svg", running_accuracy_svg(runs, dataset, order));
  return written;
}

}  // namespace vlmadapt::report
