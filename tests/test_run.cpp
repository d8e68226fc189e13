// End to end: recipes through the shared loop and evaluator on Fashion-MNIST with a
// fixture model; resume after a real kill; recipe errors through the CLI.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/core/safetensors.h>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/cli/cli.h>
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;

namespace {

// A small but real few-shot run: 10 classes, 4 shots, 500 test images, the tiny ViT.
std::string recipe(const fs::path& dir, const std::string& method, const std::string& extra = "") {
  const auto path = dir / (method + ".ini");
  std::ofstream(path) << "method = " << method << "\noutput = " << (dir / "runs").string() << "\n"
                      << "[data]\ndataset = fashion_mnist\nshots = 4\nseed = 1\ntest_limit = 500\n"
                      << "[model]\ncheckpoint = " << vt::tiny_vit() << "\n"
                      << "[train]\nepochs = 4\nbatch_size = 8\n" << extra;
  return path.string();
}

int cli(std::vector<std::string> args, std::string* out = nullptr) {
  std::ostringstream o, e;
  vlmadapt::Progress::quiet() = true;
  int code = vlmadapt::cli::run(args, o, e);
  if (out) *out = o.str() + e.str();
  return code;
}

nlohmann::json metrics_of(const fs::path& run) {
  return nlohmann::json::parse(vlmadapt::read_file((run / "metrics.json").string()));
}

fs::path run_dir(const fs::path& dir, const std::string& method, const std::string& name) {
  return dir / "runs" / "fashion_mnist" / method / (name + "_4shot") / "seed1";
}

TEST(Run, CoopEndToEnd) {
  auto dir = vt::temp_dir("run_coop");
  std::string log;
  ASSERT_EQ(cli({"train", "--recipe", recipe(dir, "coop", "[coop]\nn_ctx = 4\n")}, &log), 0) << log;
  auto run = run_dir(dir, "coop", "coop");
  for (const char* f : {"recipe.ini", "split.json", "method.safetensors", "metrics.json", "run.json", "confusion_test.csv"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  auto m = metrics_of(run);
  EXPECT_EQ(m["test"]["count"].get<int>(), 500);
  EXPECT_GT(m["test"]["top1"].get<double>(), 0.0);
  EXPECT_EQ(vlmadapt::read_safetensors((run / "method.safetensors").string()).at("prompt_learner.ctx").size(0), 4);
  // eval from the folder alone gives the same numbers
  std::string out;
  {
    std::ostringstream o, e;
    ASSERT_EQ(vlmadapt::cli::run({"eval", "--run", run.string()}, o, e), 0) << e.str();
    auto again = nlohmann::json::parse(o.str());
    EXPECT_NEAR(again["test"]["top1"].get<double>(), m["test"]["top1"].get<double>(), 1e-9) << o.str();
  }
  // a finished run is skipped unless forced
  ASSERT_EQ(cli({"train", "--recipe", recipe(dir, "coop", "[coop]\nn_ctx = 4\n")}, &out), 0);
  EXPECT_NE(out.find("skipping"), std::string::npos) << out;
  // ... but not under another recipe: its numbers would be reported as this one's.
  std::string err;
  EXPECT_NE(cli({"train", "--recipe", recipe(dir, "coop", "[coop]\nn_ctx = 4\n"), "--set", "data.test_limit=50"}, &err),
            0);
  EXPECT_NE(err.find("data.test_limit = 500 there, 50 now"), std::string::npos) << err;
  EXPECT_NE(err.find("force = true"), std::string::npos) << err;
  fs::remove_all(dir);
}

TEST(Run, LinearProbeEndToEnd) {
  auto dir = vt::temp_dir("run_probe");
  std::string log;
  ASSERT_EQ(cli({"train", "--recipe", recipe(dir, "linear_probe")}, &log), 0) << log;
  auto m = metrics_of(run_dir(dir, "linear_probe", "linear_probe"));
  EXPECT_EQ(m["test"]["count"].get<int>(), 500);
  EXPECT_GT(m["test"]["top1"].get<double>(), 10.0);  // well above chance on 10 classes
  fs::remove_all(dir);
}

// A finished run of every built-in method evaluates again from its folder alone (its
// state loaded into a fresh method) to the same numbers.
TEST(Run, EvalFromTheFolderWorksForEveryMethod) {
  auto dir = vt::temp_dir("run_every");
  for (const char* method : {"zeroshot", "linear_probe", "coop", "tpt", "rlcf", "rlcf_image"}) {
    std::string log;
    ASSERT_EQ(cli({"train", "--recipe", recipe(dir, method), "--set", "data.test_limit=12", "train.epochs=1",
                   "eval.views=4", "eval.predictions=true"}, &log), 0) << method << ": " << log;
    const auto run = run_dir(dir, method, method);
    std::ostringstream o, e;
    ASSERT_EQ(vlmadapt::cli::run({"eval", "--run", run.string()}, o, e), 0) << method << ": " << e.str();
    auto again = nlohmann::json::parse(o.str());
    EXPECT_EQ(again["test"]["top1"].get<double>(), metrics_of(run)["test"]["top1"].get<double>()) << method;
    EXPECT_EQ(again["test"]["ece"].get<double>(), metrics_of(run)["test"]["ece"].get<double>()) << method;
  }
  fs::remove_all(dir);
}

// The shared code calls each hook from one place, as method.h orders them.
struct HookCounts {
  int train_begin = 0, after_backward = 0, epoch_end = 0, train_end = 0, stream_begin = 0, stream_end = 0;
};
HookCounts& hook_counts() {
  static HookCounts counts;
  return counts;
}
struct HookProbeOptions {
  void bind(vlmadapt::OptionSet&) {}
};
class HookProbe : public vlmadapt::Method {
 public:
  explicit HookProbe(const HookProbeOptions&) { bias_ = register_parameter("bias", torch::zeros({10})); }
  vlmadapt::Contract contract() const override {
    return {vlmadapt::Input::Features, false, true, vlmadapt::Adaptation::Online};
  }
  void setup(const vlmadapt::TaskContext&) override {}
  torch::Tensor logits(const vlmadapt::Batch& b) override {
    const auto& f = b.image_features;
    return f.narrow(1, 0, 10) + bias_;
  }
  void on_train_begin(int64_t) override { ++hook_counts().train_begin; }
  void after_backward() override {
    EXPECT_TRUE(bias_.grad().defined());  // gradients are there, the step is not yet taken
    ++hook_counts().after_backward;
  }
  void on_epoch_end(int64_t, int64_t) override { ++hook_counts().epoch_end; }
  void on_train_end() override { ++hook_counts().train_end; }
  void on_stream_begin() override { ++hook_counts().stream_begin; }
  void on_stream_end() override { ++hook_counts().stream_end; }

 private:
  torch::Tensor bias_;
};
VLMADAPT_REGISTER_METHOD(HookProbe, HookProbeOptions, "hook_probe", "test method of test_run: counts hook calls")

TEST(Run, TheSharedCodeCallsEachHookAsMethodHOrdersThem) {
  auto dir = vt::temp_dir("run_hooks");
  hook_counts() = {};
  std::string log;
  // 4 shots x 10 classes = 40 images, batches of 8: 5 steps per epoch, 3 epochs.
  ASSERT_EQ(cli({"train", "--recipe", recipe(dir, "hook_probe"), "--set", "train.epochs=3", "data.test_limit=5",
                 "eval.views=2"}, &log), 0) << log;
  const auto& c = hook_counts();
  EXPECT_EQ(c.train_begin, 1);
  EXPECT_EQ(c.after_backward, 15);
  EXPECT_EQ(c.epoch_end, 3);
  EXPECT_EQ(c.train_end, 1);
  EXPECT_EQ(c.stream_begin, 2);  // the val split, then the test split, each one stream
  EXPECT_EQ(c.stream_end, 2);
  fs::remove_all(dir);
}

TEST(Run, ResumeAfterAKillReachesTheSameParameters) {
  auto dir = vt::temp_dir("run_resume");
  const auto straight = recipe(dir, "coop", "[coop]\nn_ctx = 4\n");
  ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=straight"}), 0);
  // The same run in a separate process, killed (SIGKILL) right after epoch 2 ...
  const std::string cmd = "VLMADAPT_KILL_AFTER_EPOCH=2 " + vt::cli_path() + " train --recipe " + straight +
                          " --set name=killed > /dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + 9)) << status;
  auto killed = run_dir(dir, "coop", "killed");
  ASSERT_FALSE(fs::exists(killed / "method.safetensors"));
  ASSERT_TRUE(fs::exists(killed / "checkpoint" / "latest.json"));
  // ... then resumed: the final context vectors equal the uninterrupted run's exactly.
  ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=killed", "--resume"}), 0);
  auto a = vlmadapt::read_safetensors((run_dir(dir, "coop", "straight") / "method.safetensors").string());
  auto b = vlmadapt::read_safetensors((killed / "method.safetensors").string());
  EXPECT_TRUE(torch::equal(a.at("prompt_learner.ctx"), b.at("prompt_learner.ctx")));
  fs::remove_all(dir);
}

TEST(Run, RecipeErrorsNameTheKey) {
  auto dir = vt::temp_dir("run_errors");
  std::string out;
  EXPECT_NE(cli({"train", "--recipe", recipe(dir, "coop"), "--set", "train.lr_rate=0.1"}, &out), 0);
  EXPECT_NE(out.find("train.lr"), std::string::npos) << out;
  EXPECT_NE(cli({"train", "--recipe", (dir / "missing.ini").string()}, &out), 0);
  EXPECT_NE(out.find("missing.ini"), std::string::npos) << out;
  fs::remove_all(dir);
}

}  // namespace
