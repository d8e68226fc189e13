// Cross-dataset transfer (engine/transfer.h, `vlmadapt eval --run DIR --recipe`,
// `vlmadapt transfer`): short Fashion-MNIST runs with the tiny ViT evaluated on other
// datasets made of Fashion-MNIST images, and the errors of states sized by the classes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <vlmadapt/cli/cli.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/image.h>

#include "test_support.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;
using nlohmann::json;

namespace {

int cli(const std::vector<std::string>& args, std::string* out = nullptr) { return vt::run_cli(args, out); }

json json_of(const fs::path& file) { return json::parse(vlmadapt::read_file(file.string())); }

// `per_class` Fashion-MNIST test images of each label in `labels` as <root>/<folder>/<i>.png.
void write_images(const fs::path& root, const std::vector<std::pair<int64_t, std::string>>& labels, int per_class,
                  const std::string& split = "") {
  vlmadapt::DataOptions o;
  const vlmadapt::Dataset fm = vlmadapt::open_dataset(o);
  for (const auto& [label, folder] : labels) {
    const fs::path dir = root / split / folder;
    fs::create_directories(dir);
    int n = 0;
    for (size_t i = 0; i < fm.test.size() && n < per_class; ++i)
      if (fm.test[i].label == label)
        cv::imwrite((dir / (std::to_string(n++) + ".png")).string(), vlmadapt::to_rgb(fm.load(fm.test[i].ref)));
  }
}

class Transfer : public ::testing::Test {
 protected:
  static fs::path dir;
  static void SetUpTestSuite() {
    dir = vt::temp_dir("transfer");
    // three Fashion-MNIST classes under other names: another dataset with 3 classes
    write_images(dir / "three", {{4, "coat"}, {5, "sandal"}, {8, "bag"}}, 10);
    std::ofstream(dir / "three.ini") << "# three classes\n[data]\ndataset = folder\nroot = " << (dir / "three").string() << "\n";
    std::ofstream(dir / "fashion.ini") << "# the source's own test images\n[data]\ndataset = fashion_mnist\ntest_limit = 200\n";
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  static fs::path train(const std::string& method, const std::string& name, const std::string& extra,
                        const std::string& data = "dataset = fashion_mnist\ntest_limit = 200\n") {
    const fs::path recipe = dir / (name + ".ini");
    std::ofstream(recipe) << "method = " << method << "\noutput = " << (dir / "runs").string() << "\n"
                          << "[data]\nshots = 4\n" << data << "[model]\ncheckpoint = " << vt::tiny_vit() << "\n"
                          << "[train]\nepochs = 2\nbatch_size = 8\n" << extra;
    std::string log;
    EXPECT_EQ(cli({"train", "--recipe", recipe.string()}, &log), 0) << log;
    const std::string dataset = data.substr(data.find("= ") + 2, data.find('\n') - data.find("= ") - 2);
    return dir / "runs" / dataset / method / (name + "_4shot") / "seed1";
  }
};
fs::path Transfer::dir;

TEST_F(Transfer, ACoopRunOnAnotherDatasetAndOnItsOwn) {
  const fs::path run = train("coop", "coop", "[coop]\nn_ctx = 4\n");
  std::string log;
  ASSERT_EQ(cli({"eval", "--run", run.string(), "--recipe", (dir / "three.ini").string()}, &log), 0) << log;
  const fs::path out = run / "transfer" / "folder";
  const json m = json_of(out / "metrics.json");
  EXPECT_EQ(m["test"]["count"].get<int>(), 30);
  const json r = json_of(out / "run.json");
  EXPECT_EQ(r["kind"], "transfer");
  EXPECT_EQ(r["classes"].get<int>(), 3);
  EXPECT_EQ(r["source"]["run"], run.string());
  EXPECT_TRUE(fs::exists(out / "confusion_test.csv"));
  // on its own test images, the transfer is the run's own evaluation
  ASSERT_EQ(cli({"transfer", "--run", run.string(), (dir / "fashion.ini").string()}, &log), 0) << log;
  EXPECT_DOUBLE_EQ(json_of(run / "transfer" / "fashion_mnist" / "metrics.json")["test"]["top1"].get<double>(),
                   json_of(run / "metrics.json")["test"]["top1"].get<double>());
  // the report shows both beside the source
  std::string report;
  ASSERT_EQ(cli({"report", "--out", (dir / "report").string(), run.string()}, &report), 0) << report;
  EXPECT_NE(report.find("| method | shots | fashion_mnist (source) | fashion_mnist | folder |"), std::string::npos) << report;
  EXPECT_TRUE(fs::exists(dir / "report" / "transfer.csv"));
  // a transfer folder is not a run of its own
  ASSERT_EQ(cli({"report", "--out", (dir / "report2").string(), out.string()}, &report), 0) << report;
  EXPECT_NE(report.find("a transfer result"), std::string::npos) << report;
}

TEST_F(Transfer, AStateSizedByTheClassesIsAClearError) {
  const fs::path csc = train("coop", "csc", "[coop]\nn_ctx = 4\ncsc = true\n");
  std::string err;
  EXPECT_EQ(cli({"eval", "--run", csc.string(), "--recipe", (dir / "three.ini").string()}, &err), 1);
  EXPECT_NE(err.find("run " + csc.string() + " (coop, learned on 10 classes of fashion_mnist) on folder (3 classes)"),
            std::string::npos) << err;
  EXPECT_NE(err.find("key 'prompt_learner.ctx' has shape [10, 4,"), std::string::npos) << err;
  EXPECT_NE(err.find("expected [3, 4,"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(csc / "transfer" / "folder" / "run.json"));
  // a linear probe's weights take their shape from the data: scoring them is the error
  const fs::path lp = train("linear_probe", "lp", "");
  EXPECT_EQ(cli({"eval", "--run", lp.string(), "--recipe", (dir / "three.ini").string()}, &err), 1);
  EXPECT_NE(err.find("the method scores 10 classes, but folder has 3"), std::string::npos) << err;
  EXPECT_NE(err.find("sized by the run's classes: "), std::string::npos) << err;
  EXPECT_NE(err.find("'weight' [10,"), std::string::npos) << err;
  EXPECT_EQ(cli({"eval", "--run", (dir / "nowhere").string(), "--recipe", (dir / "three.ini").string()}, &err), 1);
  EXPECT_NE(err.find("no such run folder"), std::string::npos) << err;
}

// ImageNet-A's classes are a subset of ImageNet's: an ImageNet run's classifier is scored on
// their columns, so a class-specific context of all ImageNet classes transfers.
TEST_F(Transfer, ImageNetVariantsScoreTheirColumnsOfTheRunsClassifier) {
  const std::vector<std::pair<int64_t, std::string>> wnids{
      {0, "n00000000"}, {1, "n00000001"}, {2, "n00000002"}, {3, "n00000003"}};
  std::ofstream(dir / "classnames.txt") << "n00000000 t-shirt\nn00000001 trouser\nn00000002 pullover\nn00000003 dress\n";
  write_images(dir / "in", wnids, 6, "train");
  write_images(dir / "in", wnids, 6, "val");
  write_images(dir / "in_a", {{1, "n00000001"}, {3, "n00000003"}}, 5);
  const std::string classes = "classnames_file = " + (dir / "classnames.txt").string() + "\n";
  const fs::path run = train("coop", "csc_in", "[coop]\nn_ctx = 4\ncsc = true\n",
                             "dataset = imagenet\nroot = " + (dir / "in").string() + "\n" + classes);
  std::ofstream(dir / "in_a.ini") << "# a\n[data]\ndataset = imagenet_a\nroot = " << (dir / "in_a").string() << "\n" << classes;
  std::string log;
  ASSERT_EQ(cli({"transfer", "--run", run.string(), (dir / "in_a.ini").string()}, &log), 0) << log;
  const json r = json_of(run / "transfer" / "imagenet_a" / "run.json");
  EXPECT_EQ(r["classes"].get<int>(), 2);
  EXPECT_NE(r["scored_as"].get<std::string>().find("parent_labels"), std::string::npos);
  EXPECT_EQ(json_of(run / "transfer" / "imagenet_a" / "metrics.json")["test"]["count"].get<int>(), 10);
}

}  // namespace
