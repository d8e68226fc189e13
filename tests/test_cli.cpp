// The CLI in-process: every command's happy path and its error cases.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include <vlmadapt/core/safetensors.h>

#include <vlmadapt/cli/cli.h>
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;

namespace {

struct Result {
  int code;
  std::string out, err;
};

Result run(std::vector<std::string> args) {
  std::ostringstream out, err;
  int code = vlmadapt::cli::run(args, out, err);
  return {code, out.str(), err.str()};
}

std::string image(const std::string& name) { return (vt::fixtures() / "preprocess" / "images" / name).string(); }

TEST(Cli, HelpAndUnknownCommand) {
  auto r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* cmd : {"info", "classify", "embed", "methods", "train", "tta", "eval", "report", "bench"})
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  r = run({"frobnicate"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos);
  for (const char* cmd : {"info", "classify", "embed", "methods", "train", "tta", "eval", "report", "bench"}) {
    r = run({cmd, "--help"});
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.out.find("usage: vlmadapt"), std::string::npos) << cmd;
  }
}

TEST(Cli, InfoNamesFormatAndArchitecture) {
  auto r = run({"info", vt::tiny_vit()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("openai-torchscript"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ViT"), std::string::npos) << r.out;
  r = run({"info", (vt::fixtures() / "clip" / "tiny_rn" / "model_openclip.bin").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("ModifiedResNet"), std::string::npos) << r.out;
}

TEST(Cli, ClassifyPrintsTopKAsTextAndJson) {
  auto r = run({"classify", "--model", vt::tiny_vit(), "--classes", "cat,dog,rocket", "--top-k", "2",
                image("chelsea.png"), image("rocket.jpg")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("chelsea.png"), std::string::npos);
  r = run({"classify", "--model", vt::tiny_vit(), "--classes", "cat,dog,rocket", "--json", image("chelsea.png")});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["top"].size(), 3u);
  double total = 0;
  for (const auto& t : j["top"]) total += t["score"].get<double>();
  EXPECT_NEAR(total, 1.0, 1e-5);  // all classes shown: softmax sums to one
}

TEST(Cli, EmbedWritesFeatures) {
  auto dir = vt::temp_dir("cli_embed");
  const auto out = (dir / "f.safetensors").string();
  auto r = run({"embed", "--model", vt::tiny_vit(), "-o", out, "--texts", "a photo of a dog.|a cat", "--normalize",
                image("horse.png")});
  ASSERT_EQ(r.code, 0) << r.err;
  auto t = vlmadapt::read_safetensors(out);
  EXPECT_EQ(t.at("text_features").sizes(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(t.at("image_features").sizes(), (std::vector<int64_t>{1, 64}));
  EXPECT_NEAR(t.at("image_features").norm().item<double>(), 1.0, 1e-5);
  fs::remove_all(dir);
}

TEST(Cli, BadInputGivesAClearErrorAndNonZeroExit) {
  auto dir = vt::temp_dir("cli_errors");
  // a missing model file
  auto r = run({"info", "/no/such/model.pt"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/no/such/model.pt"), std::string::npos) << r.err;
  // a file that is not an image
  const auto text = (dir / "notes.jpg").string();
  std::ofstream(text) << "not an image";
  r = run({"classify", "--model", vt::tiny_vit(), "--classes", "a,b", text});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(text), std::string::npos) << r.err;
  // an unknown option
  r = run({"classify", "--modle", vt::tiny_vit()});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("modle"), std::string::npos) << r.err;
  // no classes
  r = run({"classify", "--model", vt::tiny_vit(), image("horse.png")});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--classes"), std::string::npos) << r.err;
  // an over-long prompt without truncation
  r = run({"embed", "--model", vt::tiny_vit(), "-o", (dir / "x.safetensors").string(), "--texts",
           std::string(400, 'a') + " " + std::string(400, 'b')});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("aaaa"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
  fs::remove_all(dir);
}

TEST(Cli, MethodsListsOptions) {
  auto r = run({"methods"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("coop.n_ctx"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("linear_probe"), std::string::npos);
  r = run({"methods", "nosuch"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("nosuch"), std::string::npos) << r.err;
}

// The bench prints perf_py.py's fields for each task (timings are not checked: unit tests
// are never timed), and refuses bad tasks and architectures.
TEST(Cli, BenchPrintsOneJsonLinePerTask) {
  const std::vector<std::pair<std::string, std::string>> tasks = {
      {"encode", "images_per_s"}, {"coop", "seconds_per_step"}, {"tpt", "seconds_per_image"}};
  for (const auto& [task, field] : tasks) {
    auto r = run({"bench", task, "--arch", "ViT-B/32", "--n-cls", "3", "--batch", "2", "--reps", "1"});
    ASSERT_EQ(r.code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_GT(j.at(field).get<double>(), 0) << task;
    EXPECT_GT(j.at("peak_rss_mb").get<double>(), 0);
    EXPECT_EQ(j.at("arch"), "ViT-B/32");
    EXPECT_EQ(j.at("n_cls"), 3);
    if (task == "encode") EXPECT_GT(j.at("matmul_gflops").get<double>(), 0);
    if (task == "coop") EXPECT_TRUE(std::isfinite(j.at("loss").get<double>()));
  }
  // One epoch online and one from cached features, on the built-in model and real data.
  auto e = run({"bench", "epoch", "--arch", "default", "--shots", "2", "--feature-views", "2"});
  ASSERT_EQ(e.code, 0) << e.err;
  auto j = nlohmann::json::parse(e.out);
  for (const char* field : {"online_seconds", "cached_seconds", "speedup", "cache_seconds"})
    EXPECT_GT(j.at(field).get<double>(), 0) << field;
  EXPECT_EQ(j.at("images"), 20);
  EXPECT_EQ(j.at("feature_views"), 2);
  e = run({"bench", "epoch", "--arch", "default", "--feature-views", "0"});
  EXPECT_NE(e.code, 0);
  EXPECT_NE(e.err.find("--feature-views"), std::string::npos) << e.err;
  // A test-time method on its views through the stream; a method that does not adapt
  // scores every view; an unknown method lists the known ones.
  for (const char* method : {"tpt", "zeroshot"}) {
    e = run({"bench", "tta", "--arch", "default", "--method", method, "--views", "4", "--reps", "1"});
    ASSERT_EQ(e.code, 0) << e.err;
    j = nlohmann::json::parse(e.out);
    EXPECT_EQ(j.at("method"), method);
    EXPECT_EQ(j.at("views"), 4);
    EXPECT_GT(j.at("seconds_per_image").get<double>(), 0);
    EXPECT_GE(j.at("prediction").get<int64_t>(), 0);
  }
  e = run({"bench", "tta", "--arch", "default", "--method", "nosuch"});
  EXPECT_EQ(e.code, 1);
  EXPECT_NE(e.err.find("zeroshot"), std::string::npos) << e.err;
  auto r = run({"bench", "train"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown task 'train'"), std::string::npos) << r.err;
  r = run({"bench", "encode", "--arch", "ViT-Q/99"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("ViT-Q/99"), std::string::npos) << r.err;
}

}  // namespace
