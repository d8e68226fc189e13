// End to end: recipes through the shared loop and evaluator on Fashion-MNIST with a
// fixture model; resume after a real kill; recipe errors through the CLI.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/core/safetensors.h>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/cli/cli.h>
#include "test_support.h"
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

int cli(const std::vector<std::string>& args, std::string* out = nullptr) { return vt::run_cli(args, out); }

nlohmann::json metrics_of(const fs::path& run) {
  return nlohmann::json::parse(vlmadapt::read_file((run / "metrics.json").string()));
}

fs::path run_dir(const fs::path& dir, const std::string& method, const std::string& name) {
  return dir / "runs" / "fashion_mnist" / method / (name + "_4shot") / "seed1";
}

// Each run of `recipe` killed at a point (VLMADAPT_KILL_AT) and resumed ends with the
// method state `expected` (the uninterrupted run's), bit for bit.
void expect_killed_runs_resume_to(const fs::path& dir, const std::string& method, const std::string& recipe,
                                  const vlmadapt::TensorMap& expected, const std::vector<std::string>& points) {
  for (const std::string& at : points) {
    const std::string name = "killed_" + at.substr(0, at.find(':'));
    const std::string cmd = "VLMADAPT_KILL_AT=" + at + " " + vt::cli_path() + " train --recipe " + recipe +
                            " --set name=" + name + " > /dev/null 2>&1";
    const int status = std::system(cmd.c_str());
    ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + 9)) << at << ": " << status;
    ASSERT_EQ(cli({"train", "--recipe", recipe, "--set", "name=" + name, "--resume"}), 0) << at;
    const auto resumed = vlmadapt::read_safetensors((run_dir(dir, method, name) / "method.safetensors").string());
    for (const auto& [key, t] : expected) EXPECT_TRUE(torch::equal(t, resumed.at(key))) << at << ": " << key;
  }
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

// Diverges once, at a given step of the shared loop: its loss or its gradient is NaN.
int& diverge_step() {
  static int step = -1;
  return step;
}
bool& diverge_gradient() {
  static bool gradient = false;
  return gradient;
}
class DivergeProbe : public vlmadapt::Method {
 public:
  explicit DivergeProbe(const HookProbeOptions&) { bias_ = register_parameter("bias", torch::zeros({10})); }
  vlmadapt::Contract contract() const override { return {vlmadapt::Input::Features, false, true}; }
  void setup(const vlmadapt::TaskContext&) override {}
  torch::Tensor logits(const vlmadapt::Batch& b) override { return b.image_features.narrow(1, 0, 10) + bias_; }
  torch::Tensor loss(const vlmadapt::Batch& b) override {
    auto l = Method::loss(b);
    if (steps_++ != diverge_step()) return l;
    // sqrt at 0: a finite loss whose gradient is NaN (inf * 0).
    return diverge_gradient() ? l + torch::sqrt((bias_ * 0).sum()) : l * std::nan("");
  }

 private:
  torch::Tensor bias_;
  int steps_ = 0;
};
VLMADAPT_REGISTER_METHOD(DivergeProbe, HookProbeOptions, "diverge_probe", "test method of test_run: diverges once")

TEST(Run, ANonFiniteLossOrGradientStopsTheRunWhereItHappenedAndResumeGoesOn) {
  for (bool gradient : {false, true}) {
    auto dir = vt::temp_dir("run_diverge");
    diverge_step() = 7;  // 5 steps per epoch: the third step of the second epoch
    diverge_gradient() = gradient;
    std::string log;
    const auto r = recipe(dir, "diverge_probe");
    EXPECT_EQ(cli({"train", "--recipe", r, "--set", "train.epochs=3", "data.test_limit=5"}, &log), 1);
    EXPECT_NE(log.find("epoch 2, step 3: training diverged: "), std::string::npos) << log;
    EXPECT_NE(log.find(gradient ? "a gradient is not finite" : "the loss is nan"), std::string::npos) << log;
    const auto run = run_dir(dir, "diverge_probe", "diverge_probe");
    auto latest = nlohmann::json::parse(vlmadapt::read_file((run / "checkpoint" / "latest.json").string()));
    EXPECT_EQ(latest["epoch"], 1);  // the last good epoch
    diverge_step() = -1;
    ASSERT_EQ(cli({"train", "--recipe", r, "--set", "train.epochs=3", "data.test_limit=5", "--resume"}, &log), 0) << log;
    auto done = nlohmann::json::parse(vlmadapt::read_file((run / "run.json").string()));
    EXPECT_EQ(done["status"], "finished");
    EXPECT_TRUE(std::isfinite(done["final_loss"].get<double>()));
    fs::remove_all(dir);
  }
}

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

// A run folder has one writer at a time, cleans up after a killed one, and the keys that
// name its folders cannot leave the output folder.
TEST(Run, RunFoldersAreLockedCleanedAndCannotBeEscaped) {
  auto dir = vt::temp_dir("run_folder");
  std::string log;
  EXPECT_EQ(cli({"train", "--recipe", recipe(dir, "zeroshot"), "--set", "name=../../escape"}, &log), 1);
  EXPECT_NE(log.find("name: '../../escape' cannot name a folder"), std::string::npos) << log;
  EXPECT_EQ(cli({"train", "--recipe", recipe(dir, "zeroshot"), "--set", "data.dataset=../x"}, &log), 1);
  EXPECT_NE(log.find("data.dataset: '../x'"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir / "escape"));
  const auto run = run_dir(dir, "zeroshot", "zeroshot");
  {
    vlmadapt::FolderLock held(run);  // another writer
    EXPECT_EQ(cli({"train", "--recipe", recipe(dir, "zeroshot")}, &log), 1);
    EXPECT_NE(log.find("another run is writing into this folder"), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(run / "run.json"));
  }
  std::ofstream(run / "metrics.json.tmp.4242") << "half a file of a killed run";
  ASSERT_EQ(cli({"train", "--recipe", recipe(dir, "zeroshot")}, &log), 0) << log;
  EXPECT_FALSE(fs::exists(run / "metrics.json.tmp.4242"));
  EXPECT_NE(log.find("removed 1 temporary file"), std::string::npos) << log;
  fs::remove_all(dir);
}

// Killed (SIGKILL, in a separate process) mid-epoch, in the middle of a checkpoint write,
// and between epochs, then resumed: the final context vectors equal the uninterrupted
// run's bit for bit, and no file is left half-written.
TEST(Run, KilledAnywhereAndResumedReachesTheSameParameters) {
  auto dir = vt::temp_dir("run_resume");
  const auto straight = recipe(dir, "coop", "[coop]\nn_ctx = 4\n");
  ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=straight"}), 0);
  const auto expected = vlmadapt::read_safetensors((run_dir(dir, "coop", "straight") / "method.safetensors").string());
  // 5 steps per epoch, 4 epochs.
  for (const std::string at : {"step:7", "checkpoint:2", "epoch:2"}) {
    const std::string name = "killed_" + at.substr(0, at.find(':'));
    const std::string cmd = "VLMADAPT_KILL_AT=" + at + " " + vt::cli_path() + " train --recipe " + straight +
                            " --set name=" + name + " > /dev/null 2>&1";
    const int status = std::system(cmd.c_str());
    ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + 9)) << at << ": " << status;
    auto killed = run_dir(dir, "coop", name);
    ASSERT_FALSE(fs::exists(killed / "method.safetensors")) << at;
    ASSERT_TRUE(fs::exists(killed / "checkpoint" / "latest.json")) << at;
    auto latest = nlohmann::json::parse(vlmadapt::read_file((killed / "checkpoint" / "latest.json").string()));
    EXPECT_EQ(latest["epoch"], at == "epoch:2" ? 2 : 1) << at;  // the killed epoch's checkpoint never committed
    ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=" + name, "--resume"}), 0) << at;
    auto b = vlmadapt::read_safetensors((killed / "method.safetensors").string());
    EXPECT_TRUE(torch::equal(expected.at("prompt_learner.ctx"), b.at("prompt_learner.ctx"))) << at;
    for (const auto& e : fs::recursive_directory_iterator(killed))
      EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << at << ": " << e.path();
  }
  // A finished run resumed again keeps the loss it recorded.
  const auto killed = run_dir(dir, "coop", "killed_epoch");
  const auto loss = nlohmann::json::parse(vlmadapt::read_file((killed / "run.json").string()))["final_loss"];
  ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=killed_epoch", "--resume"}), 0);
  EXPECT_EQ(nlohmann::json::parse(vlmadapt::read_file((killed / "run.json").string()))["final_loss"], loss);
  EXPECT_NE(loss.get<double>(), 0);
  fs::remove_all(dir);
}

// Tip-Adapter-F fits, then trains, keeping its best validation epoch in its state from
// on_epoch_end (called before each checkpoint): killed between epochs and inside a
// checkpoint, then resumed, it ends bit for bit where the uninterrupted run ends, and
// `eval --run` reproduces its metrics from the saved state alone.
TEST(Run, TipAdapterFKilledAndResumedKeepsItsBestEpoch) {
  auto dir = vt::temp_dir("run_tipf");
  const auto straight = recipe(dir, "tip_adapter_f", "optimizer = adamw\nlr = 0.01\n[tip_adapter_f]\naugment_epochs = 2\n");
  ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=straight"}), 0);
  const auto run = run_dir(dir, "tip_adapter_f", "straight");
  const auto expected = vlmadapt::read_safetensors((run / "method.safetensors").string());
  const auto chosen = nlohmann::json::parse(vlmadapt::read_file((run / "run.json").string()))["chosen"];
  const int best = static_cast<int>(chosen["epoch"].get<double>());
  ASSERT_GE(best, 1) << chosen;
  // Killed right after the best epoch (its hook must be in that epoch's checkpoint), and
  // inside the next checkpoint.
  expect_killed_runs_resume_to(dir, "tip_adapter_f", straight, expected,
                               {"epoch:" + std::to_string(best), "checkpoint:" + std::to_string(std::min(best + 1, 4))});
  std::ostringstream o, e;
  ASSERT_EQ(vlmadapt::cli::run({"eval", "--run", run.string()}, o, e), 0) << e.str();
  EXPECT_NEAR(nlohmann::json::parse(o.str())["test"]["top1"].get<double>(), metrics_of(run)["test"]["top1"].get<double>(), 1e-9);
  fs::remove_all(dir);
}

// PromptSRC trains on pixels (its prompts are inside the image tower) and carries its
// Gaussian aggregate from epoch to epoch: killed after an epoch and inside a checkpoint,
// it resumes to the same prompts, bit for bit. Base-to-new: H is reported.
TEST(Run, PromptsrcKilledAndResumedAggregatesTheSame) {
  auto dir = vt::temp_dir("run_promptsrc");
  const auto straight = recipe(dir, "promptsrc",
                               "batch_size = 4\n[data]\nclasses = base\n[promptsrc]\ndepth_text = 2\ndepth_vision = 2\n"
                               "gpa_mean = 3\ngpa_std = 1\n");
  ASSERT_EQ(cli({"train", "--recipe", straight, "--set", "name=straight"}), 0);
  const auto run = run_dir(dir, "promptsrc", "straight");
  const auto expected = vlmadapt::read_safetensors((run / "method.safetensors").string());
  EXPECT_GT(expected.at("gpa.ctx").abs().sum().item<double>(), 0);
  EXPECT_TRUE(metrics_of(run).contains("harmonic_mean"));
  expect_killed_runs_resume_to(dir, "promptsrc", straight, expected, {"epoch:2", "checkpoint:3"});
  fs::remove_all(dir);
}

TEST(Run, RecipeErrorsNameTheKey) {
  auto dir = vt::temp_dir("run_errors");
  std::string out;
  EXPECT_NE(cli({"train", "--recipe", recipe(dir, "coop"), "--set", "train.lr_rate=0.1"}, &out), 0);
  EXPECT_NE(out.find("train.lr"), std::string::npos) << out;
  // Counts and sizes out of range are refused before anything runs (a batch size of 0
  // used to loop forever over a warm feature cache).
  for (const std::string bad : {"eval.batch_size=0", "train.epochs=-2", "eval.views=0", "data.shots=-1",
                                "data.severity=0", "data.test_limit=-5", "data.workers=-1", "train.adam_eps=0",
                                "eval.runs=0", "eval.scale_min=0"}) {
    EXPECT_EQ(cli({"train", "--recipe", recipe(dir, "coop"), "--set", bad}, &out), 1) << bad;
    EXPECT_NE(out.find(bad.substr(0, bad.find('='))), std::string::npos) << out;
  }
  EXPECT_NE(cli({"train", "--recipe", (dir / "missing.ini").string()}, &out), 0);
  EXPECT_NE(out.find("missing.ini"), std::string::npos) << out;
  fs::remove_all(dir);
}

}  // namespace
