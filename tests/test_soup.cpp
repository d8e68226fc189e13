// Model soups of finished runs (engine/soup.h, `vlmadapt soup`): short CoOp runs on
// Fashion-MNIST with the tiny ViT, mixed uniformly and greedily, and the errors for runs
// that cannot be mixed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include <vlmadapt/cli/cli.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/engine/soup.h>

#include "test_support.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;
using nlohmann::json;
using vlmadapt::TensorMap;

namespace {

int cli(const std::vector<std::string>& args, std::string* out = nullptr) { return vt::run_cli(args, out); }

json json_of(const fs::path& file) { return json::parse(vlmadapt::read_file(file.string())); }
TensorMap state_of(const fs::path& run) { return vlmadapt::read_safetensors((run / "method.safetensors").string()); }

// The runs the tests mix, each trained once: 10 classes, 4 shots, 200 test images, the
// built-in model (the fixtures' tiny models have random weights: every state scores chance).
class Soup : public ::testing::Test {
 protected:
  static fs::path dir;

  static fs::path train(const std::string& method, const std::string& name, const std::string& extra) {
    const fs::path recipe = dir / (name + ".ini");
    std::ofstream(recipe) << "method = " << method << "\noutput = " << (dir / "runs").string() << "\n"
                          << "[data]\ndataset = fashion_mnist\nshots = 4\ntest_limit = 200\n"
                          << "[model]\ncheckpoint = default\n"  // the built-in model: accuracies that differ
                          << "[train]\nepochs = 2\nbatch_size = 8\n" << extra;
    std::string log;
    EXPECT_EQ(cli({"train", "--recipe", recipe.string()}, &log), 0) << log;
    const auto seed = extra.find("seed = 2") != std::string::npos ? "seed2" : "seed1";
    return dir / "runs" / "fashion_mnist" / method / (name + "_4shot") / seed;
  }
  static fs::path coop(const std::string& name, const std::string& extra = "") {
    return train("coop", name, "[coop]\nn_ctx = 4\n" + extra);
  }

  static void SetUpTestSuite() { dir = vt::temp_dir("soup"); }
  static void TearDownTestSuite() { fs::remove_all(dir); }

  // A copy of `run` under another name, its state changed by `edit`.
  static fs::path copy_run(const fs::path& run, const std::string& name, const std::function<void(TensorMap&)>& edit) {
    const fs::path to = dir / "copies" / name;
    fs::remove_all(to);
    fs::create_directories(to.parent_path());
    fs::copy(run, to, fs::copy_options::recursive);
    TensorMap state = state_of(run);
    edit(state);
    vlmadapt::write_safetensors((to / "method.safetensors").string(), state);
    return to;
  }
};
fs::path Soup::dir;

TEST(SoupAverage, IsTheElementwiseMeanOfEachTensor) {
  TensorMap a{{"w", torch::tensor({1.0f, 2.0f, -3.0f})}, {"n", torch::tensor({7}, torch::kLong)}};
  TensorMap b{{"w", torch::tensor({3.0f, 6.0f, 0.5f})}, {"n", torch::tensor({7}, torch::kLong)}};
  const TensorMap m = vlmadapt::average_states({a, b}, {"a", "b"});
  EXPECT_TRUE(torch::equal(m.at("w"), torch::tensor({2.0f, 4.0f, -1.25f})));
  EXPECT_EQ(m.at("w").scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(m.at("n"), a.at("n")));  // equal integers are kept
  b["n"] = torch::tensor({8}, torch::kLong);
  EXPECT_NE(vt::error_of([&] { vlmadapt::average_states({a, b}, {"a", "b"}); }).find("b: state key 'n'"), std::string::npos);
  b["n"] = a["n"];
  b["w"] = torch::zeros({2});
  const auto msg = vt::error_of([&] { vlmadapt::average_states({a, b}, {"run_a", "run_b"}); });
  EXPECT_NE(msg.find("run_b: state key 'w' has shape [2], but run_a's is [3]"), std::string::npos) << msg;
  b.erase("w");
  EXPECT_NE(vt::error_of([&] { vlmadapt::average_states({a, b}, {"run_a", "run_b"}); }).find("run_b: state has no key 'w'"),
            std::string::npos);
}

TEST_F(Soup, OfOneRunIsThatRun) {
  const fs::path a = coop("coop");
  const fs::path out = dir / "soup_one";
  std::string log;
  ASSERT_EQ(cli({"soup", a.string(), "--out", out.string()}, &log), 0) << log;
  const TensorMap mine = state_of(a), soup = state_of(out);
  ASSERT_EQ(soup.size(), mine.size());
  for (const auto& [key, t] : mine) EXPECT_TRUE(torch::equal(soup.at(key), t)) << key;
  EXPECT_DOUBLE_EQ(json_of(out / "metrics.json")["test"]["top1"].get<double>(),
                   json_of(a / "metrics.json")["test"]["top1"].get<double>());
  const json run = json_of(out / "run.json");
  EXPECT_EQ(run["status"], "finished");
  EXPECT_EQ(run["kind"], "soup");
  EXPECT_EQ(run["recipe"], "coop_soup");
  EXPECT_EQ(run["soup"]["mode"], "uniform");
  EXPECT_EQ(run["soup"]["kept"], json::array({a.string()}));
  for (const char* f : {"recipe.ini", "split.json", "confusion_test.csv"}) EXPECT_TRUE(fs::exists(out / f)) << f;
  // a soup folder is a run folder: eval --run reads it alone and gives the same numbers
  std::string again;
  ASSERT_EQ(cli({"eval", "--run", out.string()}, &again), 0) << again;
  EXPECT_NE(again.find(json_of(out / "metrics.json")["test"]["top1"].dump()), std::string::npos) << again;
}

TEST_F(Soup, UniformIsTheMeanOfTwoRuns) {
  const fs::path a = coop("coop"), b = coop("coop", "[data]\nseed = 2\n");
  const fs::path out = dir / "soup_two";
  std::string log;
  ASSERT_EQ(cli({"soup", a.string(), b.string(), "--out", out.string()}, &log), 0) << log;
  const TensorMap ta = state_of(a), tb = state_of(b), soup = state_of(out);
  const auto ctx = "prompt_learner.ctx";
  ASSERT_FALSE(torch::equal(ta.at(ctx), tb.at(ctx)));
  // by hand, one element, then every element
  EXPECT_FLOAT_EQ(soup.at(ctx)[1][3].item<float>(), (ta.at(ctx)[1][3].item<float>() + tb.at(ctx)[1][3].item<float>()) / 2);
  EXPECT_TRUE(torch::equal(soup.at(ctx), (ta.at(ctx) + tb.at(ctx)) / 2));
  const json run = json_of(out / "run.json");
  EXPECT_EQ(run["soup"]["kept"], json::array({a.string(), b.string()}));
  EXPECT_EQ(run["selection"], "none");
  EXPECT_TRUE(json_of(out / "metrics.json").contains("test"));
}

TEST_F(Soup, GreedyKeepsWhatDoesNotLowerValidation) {
  // A linear probe, and the probe times -3: that one ranks every class backwards, and so
  // does any mean of it with one or two copies of the probe (-W/2, -W/3). (A noisy CoOp
  // context is no such case: the text tower shrugs off even std-50 noise.)
  const fs::path a = train("linear_probe", "lp", "");
  const fs::path noise = copy_run(a, "negated", [](TensorMap& s) {
    s.at("weight") = -3 * s.at("weight");
    s.at("bias") = -3 * s.at("bias");
  });
  const fs::path same = copy_run(a, "same", [](TensorMap&) {});  // the soup with it scores exactly as before
  const fs::path out = dir / "soup_greedy";
  std::string log;
  ASSERT_EQ(cli({"soup", noise.string(), a.string(), same.string(), "--out", out.string(), "--greedy"}, &log), 0) << log;
  json run = json_of(out / "run.json");
  ASSERT_EQ(run["soup"]["ingredients"].size(), 3u) << run.dump(2);
  // sorted by validation top-1: a, then its copy (a tie keeps the given order), then the noise
  EXPECT_EQ(run["soup"]["ingredients"][0]["run"], a.string());
  EXPECT_EQ(run["soup"]["ingredients"][1]["run"], same.string());
  EXPECT_EQ(run["soup"]["ingredients"][2]["run"], noise.string());
  EXPECT_GT(run["soup"]["ingredients"][0]["val_top1"].get<double>(), run["soup"]["ingredients"][2]["val_top1"].get<double>());
  EXPECT_EQ(run["soup"]["kept"], json::array({a.string(), same.string()}));
  EXPECT_EQ(run["selection"], "val");
  EXPECT_EQ(run["recipe"], "lp_greedy_soup");
  for (const auto& [key, t] : state_of(a)) EXPECT_TRUE(torch::equal(state_of(out).at(key), t)) << key;
  // --strict keeps an ingredient only when validation rises: the copy goes too
  ASSERT_EQ(cli({"soup", noise.string(), a.string(), same.string(), "--out", out.string(), "--greedy", "--strict"}, &log), 0)
      << log;
  run = json_of(out / "run.json");
  EXPECT_EQ(run["soup"]["kept"], json::array({a.string()}));
}

TEST_F(Soup, GreedyNeedsValidationImagesNeverTest) {
  const fs::path a = coop("coop");
  // an ingredient that trained on a's validation images leaves no held-out image
  const fs::path leak = copy_run(a, "trained_on_val", [](TensorMap&) {});
  json split = json_of(a / "split.json");
  split["train"] = split["val"];
  vlmadapt::write_file_atomic((leak / "split.json").string(), split.dump());
  std::string err;
  EXPECT_NE(cli({"soup", a.string(), leak.string(), "--out", (dir / "soup_noval").string(), "--greedy"}, &err), 0);
  EXPECT_NE(err.find("no validation images"), std::string::npos) << err;
  EXPECT_NE(err.find("never on test"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir / "soup_noval" / "run.json"));
}

TEST_F(Soup, RunsThatCannotBeMixedAreErrorsNamingTheRunAndKey) {
  const fs::path a = coop("coop");
  const fs::path out = (dir / "soup_bad").string();
  std::string err;
  // another method
  const fs::path lp = train("linear_probe", "lp", "");
  EXPECT_EQ(cli({"soup", a.string(), lp.string(), "--out", out.string()}, &err), 1);
  EXPECT_NE(err.find(lp.string() + ": method linear_probe, but " + a.string() + " is coop"), std::string::npos) << err;
  // another context length: another shape
  const fs::path two = coop("coop_ctx2", "[coop]\nn_ctx = 2\n");
  EXPECT_EQ(cli({"soup", a.string(), two.string(), "--out", out.string()}, &err), 1);
  EXPECT_NE(err.find(two.string() + ": state key 'prompt_learner.ctx' has shape [2,"), std::string::npos) << err;
  EXPECT_NE(err.find("but " + a.string() + "'s is [4,"), std::string::npos) << err;
  // another class set (the base half), with the same shapes
  const fs::path base = coop("coop_base", "[data]\nclasses = base\n");
  EXPECT_EQ(cli({"soup", a.string(), base.string(), "--out", out.string()}, &err), 1);
  EXPECT_NE(err.find(base.string() + ": classes (fashion_mnist, data.classes = base, 5 classes) differ"), std::string::npos)
      << err;
  // another model
  const fs::path rn = copy_run(a, "other_model", [](TensorMap&) {});
  std::string ini = vlmadapt::read_file((rn / "recipe.ini").string());
  const std::string was = "checkpoint = default";
  ini.replace(ini.find(was), was.size(), "checkpoint = " + vt::tiny_rn());
  vlmadapt::write_file_atomic((rn / "recipe.ini").string(), ini);
  EXPECT_EQ(cli({"soup", a.string(), rn.string(), "--out", out.string()}, &err), 1);
  EXPECT_NE(err.find(rn.string() + ": model " + vt::tiny_rn()), std::string::npos) << err;
  // a missing folder, and a folder that is not a soup as --out
  EXPECT_EQ(cli({"soup", a.string(), (dir / "nowhere").string(), "--out", out.string()}, &err), 1);
  EXPECT_NE(err.find((dir / "nowhere").string() + ": no such run folder"), std::string::npos) << err;
  EXPECT_EQ(cli({"soup", a.string(), "--out", lp.string()}, &err), 1);
  EXPECT_NE(err.find("not a soup"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(out / "run.json"));
}

TEST_F(Soup, OfBaseToNewRunsHasBaseNewAndHarmonicMean) {
  const fs::path a = coop("coop_base", "[data]\nclasses = base\n");
  const fs::path b = coop("coop_base", "[data]\nclasses = base\nseed = 2\n");
  const fs::path out = dir / "soup_b2n";
  std::string log;
  ASSERT_EQ(cli({"soup", a.string(), b.string(), "--out", out.string(), "--greedy"}, &log), 0) << log;
  const json m = json_of(out / "metrics.json");
  for (const char* k : {"base", "new", "harmonic_mean"}) EXPECT_TRUE(m.contains(k)) << k << " " << m.dump();
  EXPECT_EQ(m["new"]["count"].get<int>() + m["base"]["count"].get<int>(), 200);
  // the report shows them side by side
  std::string report;
  ASSERT_EQ(cli({"report", "--out", (dir / "report").string(), out.string()}, &report), 0) << report;
  EXPECT_NE(report.find("| method | shots | base | new | seen | unseen | H |"), std::string::npos) << report;
}

}  // namespace
