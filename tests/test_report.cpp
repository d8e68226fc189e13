// `report` on run folders made here with known metrics (3 seeds per cell).
#include "test_util.h"
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/report/report.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>
#include <string>

namespace vt = vlmadapt::testing;
namespace rp = vlmadapt::report;
namespace fs = std::filesystem;
using nlohmann::json;
using vlmadapt::Error;

namespace {

fs::path run_dir(const fs::path& root, const std::string& dataset, const std::string& method,
                 const std::string& recipe, int shots, int seed) {
  return root / dataset / method / (recipe + "_" + std::to_string(shots) + "shot") / ("seed" + std::to_string(seed));
}

// Writes run.json (and metrics.json unless `metrics` is null) and returns the folder.
fs::path make_run(const fs::path& root, const std::string& dataset, const std::string& method, int shots, int seed,
                  const json& metrics, const std::string& status = "finished", const std::string& recipe = "default") {
  const fs::path dir = run_dir(root, dataset, method, recipe, shots, seed);
  const json run = {{"dataset", dataset}, {"method", method}, {"recipe", recipe},
                    {"shots", shots},     {"seed", seed},     {"status", status}};
  vlmadapt::write_file_atomic((dir / "run.json").string(), run.dump(2));
  if (!metrics.is_null()) vlmadapt::write_file_atomic((dir / "metrics.json").string(), metrics.dump(2));
  return dir;
}

json test_top1(double v) { return {{"test", {{"top1", v}, {"top5", 99.0}}}}; }

// pets: coop at 1/2/4 shots (means 62, 71, 80; stds 2, 1, 0), linear probe at 1/2/4,
// zero-shot CLIP at 0 shots (one seed), and an unfinished coop run that must not count.
fs::path make_runs(const std::string& name) {
  const fs::path root = vt::temp_dir(name) / "runs";
  const double coop[3][3] = {{60, 62, 64}, {70, 71, 72}, {80, 80, 80}};
  const int shots[3] = {1, 2, 4};
  for (int i = 0; i < 3; ++i)
    for (int s = 0; s < 3; ++s) {
      make_run(root, "pets", "coop", shots[i], s + 1, test_top1(coop[i][s]));
      make_run(root, "pets", "linear", shots[i], s + 1, test_top1(40 + 10 * i + s));
    }
  make_run(root, "pets", "zeroshot", 0, 1, test_top1(55));
  make_run(root, "pets", "coop", 1, 4, json(), "running");
  return root;
}

using vlmadapt::testing::error_of;

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t i = hay.find(needle); i != std::string::npos; i = hay.find(needle, i + 1)) ++n;
  return n;
}

}  // namespace

TEST(Report, CollectSkipsUnfinishedRuns) {
  const fs::path root = make_runs("report_collect");
  const rp::Collection c = rp::collect_runs({root.string()});
  EXPECT_EQ(c.runs.size(), 19u);
  ASSERT_EQ(c.skipped.size(), 1u);
  EXPECT_NE(c.skipped[0].find("seed4"), std::string::npos) << c.skipped[0];
  EXPECT_NE(c.skipped[0].find("\"running\""), std::string::npos) << c.skipped[0];
  // Overlapping paths read each run once.
  EXPECT_EQ(rp::collect_runs({root.string(), (root / "pets" / "coop").string()}).runs.size(), 19u);
}

TEST(Report, CsvAndMarkdownHoldMeanAndSampleStd) {
  const auto cells = rp::aggregate(rp::collect_runs({make_runs("report_tables").string()}).runs);
  ASSERT_EQ(cells.size(), 7u);
  const std::string csv = rp::csv(cells);
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "dataset,method,shots,metric,mean,std,n");
  EXPECT_NE(csv.find("pets,coop,1,test_top1,62.0000,2.0000,3\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find("pets,coop,2,test_top1,71.0000,1.0000,3\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find("pets,coop,4,test_top1,80.0000,0.0000,3\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find("pets,linear,4,test_top1,61.0000,1.0000,3\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find("pets,zeroshot,0,test_top1,55.0000,0.0000,1\n"), std::string::npos) << csv;

  const std::string md = rp::markdown(cells);
  EXPECT_NE(md.find("## pets"), std::string::npos);
  EXPECT_NE(md.find("| method | zero-shot | 1-shot | 2-shot | 4-shot |"), std::string::npos) << md;
  EXPECT_NE(md.find("| coop | - | 62.0 ± 2.0 (n=3) | 71.0 ± 1.0 (n=3) | 80.0 ± 0.0 (n=3) |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("| zeroshot | 55.0 (n=1) | - | - | - |"), std::string::npos) << md;
  EXPECT_EQ(count(md, "| method |"), 1u);  // one table: only test top-1 is present
}

TEST(Report, BaseNewAndHarmonicMean) {
  const fs::path root = vt::temp_dir("report_b2n") / "runs";
  json m = test_top1(75);
  m["base"] = {{"top1", 80.0}};
  m["new"] = {{"top1", 70.0}};
  make_run(root, "dtd", "cocoop", 16, 1, m);
  m["base"]["top1"] = 82.0;
  m["harmonic_mean"] = 50.0;  // given: used as is
  make_run(root, "dtd", "cocoop", 16, 2, m);
  const auto cells = rp::aggregate(rp::collect_runs({root.string()}).runs);
  const std::string csv = rp::csv(cells);
  EXPECT_NE(csv.find("dtd,cocoop,16,base_top1,81.0000,1.4142,2\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find("dtd,cocoop,16,new_top1,70.0000,0.0000,2\n"), std::string::npos) << csv;
  // seed 1: H = 2*80*70/150 = 74.6667 (computed); seed 2: 50 -> mean 62.3333
  EXPECT_NE(csv.find("dtd,cocoop,16,harmonic_mean,62.3333,"), std::string::npos) << csv;
  // base, new and H side by side, then one table per metric
  const std::string md = rp::markdown(cells);
  EXPECT_NE(md.find("| cocoop | 16-shot | 81.0 ± 1.4 (n=2) | 70.0 ± 0.0 (n=2) | - | - | 62.3 ± 17.4 (n=2) |"),
            std::string::npos)
      << md;
  EXPECT_LT(md.find("| method | shots | base | new | seen | unseen | H |"), md.find("test top-1 accuracy")) << md;
  EXPECT_EQ(count(md, "| method |"), 5u);
}

// Transductive zero-shot runs (data.paradigm = trzsl) give seen, unseen and their H as numbers.
TEST(Report, SeenUnseenAndTheirHarmonicMean) {
  const fs::path root = vt::temp_dir("report_trzsl") / "runs";
  json m = test_top1(60);
  m["seen"] = 80.0;
  m["unseen"] = 40.0;
  m["harmonic_mean"] = 2 * 80.0 * 40 / 120;
  make_run(root, "fashion_mnist", "pseudolabel", 0, 1, m);
  const std::string md = rp::markdown(rp::aggregate(rp::collect_runs({root.string()}).runs));
  EXPECT_NE(md.find("| pseudolabel | zero-shot | - | - | 80.0 (n=1) | 40.0 (n=1) | 53.3 (n=1) |"), std::string::npos) << md;
}

// Seconds per run: fitting plus training from run.json, two decimals (fits take hundredths).
TEST(Report, SecondsPerRunAreFitPlusTrain) {
  const fs::path root = vt::temp_dir("report_seconds") / "runs";
  const auto dir1 = make_run(root, "pets", "gda", 4, 1, test_top1(70));
  const auto dir2 = make_run(root, "pets", "gda", 4, 2, test_top1(72));
  auto timed = [](const fs::path& dir, double fit, double train) {
    auto run = json::parse(vlmadapt::read_file((dir / "run.json").string()));
    run["fit_seconds"] = fit;
    run["train_seconds"] = train;
    run["feature_seconds"] = 100.0;  // shared cached features: not the method's cost
    vlmadapt::write_file_atomic((dir / "run.json").string(), run.dump());
  };
  timed(dir1, 0.01, 0.0);
  timed(dir2, 0.02, 0.0);
  make_run(root, "pets", "zeroshot", 0, 1, test_top1(55));  // no timing recorded: no cell
  const auto cells = rp::aggregate(rp::collect_runs({root.string()}).runs);
  const std::string md = rp::markdown(cells);
  EXPECT_NE(md.find("| gda | 0.01 ± 0.01 (n=2) |"), std::string::npos) << md;
  EXPECT_NE(rp::csv(cells).find("pets,gda,4,run_seconds,0.0150,"), std::string::npos);
  EXPECT_EQ(count(md, "| method |"), 2u);
}

TEST(Report, CorruptOrMissingFilesAreNamed) {
  const fs::path root = vt::temp_dir("report_corrupt") / "runs";
  const fs::path dir = make_run(root, "pets", "coop", 1, 1, test_top1(50));
  const std::string metrics = (dir / "metrics.json").string();
  vlmadapt::write_file_atomic(metrics, "{\"test\": {\"top1\": 5");
  std::string e = error_of([&] { rp::collect_runs({root.string()}); });
  EXPECT_NE(e.find(metrics), std::string::npos) << e;
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;

  vlmadapt::write_file_atomic(metrics, "{\"val\": {\"top1\": 5}}");
  e = error_of([&] { rp::read_run(dir.string()); });
  EXPECT_NE(e.find(metrics), std::string::npos) << e;
  EXPECT_NE(e.find("\"test\""), std::string::npos) << e;

  fs::remove(metrics);
  e = error_of([&] { rp::read_run(dir.string()); });
  EXPECT_NE(e.find(metrics), std::string::npos) << e;

  vlmadapt::write_file_atomic((dir / "run.json").string(), "{\"status\": \"finished\", \"dataset\": 3}");
  e = error_of([&] { rp::read_run(dir.string()); });
  EXPECT_NE(e.find((dir / "run.json").string()), std::string::npos) << e;
  EXPECT_NE(e.find("\"dataset\" must be a string"), std::string::npos) << e;

  EXPECT_NE(error_of([&] { rp::collect_runs({(root / "nowhere").string()}); }).find("nowhere"), std::string::npos);
}

TEST(Report, DuplicateRunsAndRecipes) {
  const fs::path root = vt::temp_dir("report_dup") / "runs";
  make_run(root, "pets", "coop", 1, 1, test_top1(50), "finished", "a");
  make_run(root, "pets", "coop", 1, 1, test_top1(60), "finished", "b");
  const auto cells = rp::aggregate(rp::collect_runs({root.string()}).runs);
  ASSERT_EQ(cells.size(), 2u);  // two recipes are never averaged together
  EXPECT_EQ(cells[0].method, "coop/a");
  EXPECT_EQ(cells[1].method, "coop/b");
  // The same run copied to a second folder would count a seed twice.
  fs::copy(run_dir(root, "pets", "coop", "a", 1, 1), root / "copy", fs::copy_options::recursive);
  EXPECT_NE(error_of([&] { rp::collect_runs({root.string()}); }).find("same run"), std::string::npos);
}

TEST(Report, SvgHasOneLinePerMethod) {
  const auto cells = rp::aggregate(rp::collect_runs({make_runs("report_svg").string()}).runs);
  const std::string svg = rp::plot_svg(cells, "pets");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_EQ(count(svg, "<svg "), 1u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(count(svg, "<polyline"), 3u);  // coop, linear, and zero-shot's dashed line
  EXPECT_EQ(count(svg, "<polyline fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2.0\" stroke-dasharray"), 1u);
  EXPECT_EQ(count(svg, "<text"), count(svg, "</text>"));
  EXPECT_GE(count(svg, "<circle"), 2u * 3u);  // markers (plus legend markers)
  for (const char* label : {">coop<", ">linear<", ">zeroshot (0-shot)<", ">1<", ">2<", ">4<", "log2"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_THROW(rp::plot_svg(cells, "no_such_dataset"), Error);
}

TEST(Report, LinearAxisWhenShotsAreNotPowersOfTwo) {
  const fs::path root = vt::temp_dir("report_linear") / "runs";
  for (int k : {1, 3, 10}) make_run(root, "pets", "coop", k, 1, test_top1(50 + k));
  const std::string svg = rp::plot_svg(rp::aggregate(rp::collect_runs({root.string()}).runs), "pets");
  EXPECT_EQ(svg.find("log2"), std::string::npos);
  EXPECT_NE(svg.find(">10<"), std::string::npos);
}

TEST(Report, WriteReportAndPngDecodes) {
  const auto cells = rp::aggregate(rp::collect_runs({make_runs("report_png").string()}).runs);
  const fs::path out = vt::temp_dir("report_png_out") / "report";
  const auto written = rp::write_report(cells, out.string());
  ASSERT_EQ(written.size(), 4u);
  for (const char* name : {"report.md", "report.csv", "pets_test_top1.svg", "pets_test_top1.png"})
    EXPECT_TRUE(fs::exists(out / name)) << name;
  EXPECT_EQ(vlmadapt::read_file((out / "report.csv").string()), rp::csv(cells));
  const cv::Mat img = cv::imread((out / "pets_test_top1.png").string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(img.empty());
  EXPECT_EQ(img.cols, rp::kPlotWidth);
  EXPECT_EQ(img.rows, rp::kPlotHeight);
  // Some pixels carry the first method's colour (tab10 blue, BGR 180,119,31).
  int blue = 0;
  for (int y = 0; y < img.rows; ++y)
    for (int x = 0; x < img.cols; ++x) blue += img.at<cv::Vec3b>(y, x) == cv::Vec3b(180, 119, 31);
  EXPECT_GT(blue, 100);
  for (const auto& entry : fs::directory_iterator(out))  // no temporary files left behind
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  if (const char* keep = std::getenv("VLMADAPT_KEEP_PLOT")) fs::copy_file(out / "pets_test_top1.png", keep,
                                                                          fs::copy_options::overwrite_existing);
}
