// Learning from unlabelled images (data.paradigm, engine/pseudolabels.h, methods/pseudolabel.h):
// the paradigms' splits, the per-class leaderboards on hand-made scores, the loss and
// its weights by hand, GRIP's growth, the restart of each round, and a run killed between
// and inside rounds that resumes to the same prompt bit for bit.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/cli/cli.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/engine/pseudolabels.h>
#include <vlmadapt/engine/run.h>

#include "methods/pseudolabel.h"
#include "test_support.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;
using vlmadapt::Dataset;
using vlmadapt::DataOptions;
using vlmadapt::Item;
using Pairs = std::vector<std::pair<int64_t, int64_t>>;

namespace {

// 4 classes x 10 train images ("train/<i>", label i % 4) and 8 test images.
Dataset toy() {
  Dataset d;
  d.name = "toy";
  d.classnames = {"a", "b", "c", "d"};
  for (int i = 0; i < 40; ++i) d.train.push_back({"train/" + std::to_string(i), i % 4});
  for (int i = 0; i < 8; ++i) d.test.push_back({"test/" + std::to_string(i), i % 4});
  d.val = {{"val/0", 0}};
  return d;
}

DataOptions paradigm(const std::string& p, int shots) {
  DataOptions o;
  o.paradigm = p;
  o.shots = shots;
  return o;
}

Dataset split(const Dataset& full, const DataOptions& o) {
  return vlmadapt::apply_paradigm(full, vlmadapt::sample_few_shot(full, o.shots, 0, 1), o);
}

std::set<std::string> refs(const std::vector<Item>& items) {
  std::set<std::string> out;
  for (const Item& it : items) out.insert(it.ref);
  return out;
}

}  // namespace

// ---- the leaderboards, by hand -------------------------------------------------------

TEST(Pseudolabels, KPerClassByConfidenceOnAHandMadeMatrix) {
  // 6 images, 2 classes, k = 2. Class 0's board: images 0 (.9), 1 (.6) fill it; image 2
  // (.8) beats the last entry (.6): sorted and cut -> 0, 2. Image 3 (.7 for class 0) is not
  // above the last (.8) and goes to class 1, which has room. Image 4 (class 1, .95) fills
  // board 1; image 5 (class 1, .55) is below its last entry (.95) and, offered to class 0
  // at .45, below that board's last (.8): it gets no pseudolabel.
  auto probs = torch::tensor({0.9, 0.1, 0.6, 0.4, 0.8, 0.2, 0.7, 0.3, 0.05, 0.95, 0.45, 0.55}).view({6, 2});
  EXPECT_EQ(vlmadapt::select_pseudolabels(probs, 2), (Pairs{{0, 0}, {2, 0}, {3, 1}, {4, 1}}));
  EXPECT_EQ(vlmadapt::select_pseudolabels(probs, 0), Pairs{});
  EXPECT_EQ(vlmadapt::select_pseudolabels(probs, 6).size(), 6u);  // room for every image at its argmax
}

TEST(Pseudolabels, AnImageRefusedByItsClassJoinsEveryBoardWithRoom) {
  // The official code's quirk (no break): image 1 loses class 0 (full, last .9 >= .5) and
  // then joins both boards with room, classes 1 and 2.
  auto probs = torch::tensor({0.9, 0.05, 0.05, 0.5, 0.3, 0.2}).view({2, 3});
  EXPECT_EQ(vlmadapt::select_pseudolabels(probs, 1), (Pairs{{0, 0}, {1, 1}, {1, 2}}));
}

TEST(Pseudolabels, TiesKeepArrivalOrderAndTheFirstMaximum) {
  // Equal rows: argmax is the first class; an equal confidence does not displace the
  // last entry (strictly less confident only), so the first arrivals stay.
  auto probs = torch::full({3, 2}, 0.5);
  EXPECT_EQ(vlmadapt::select_pseudolabels(probs, 1), (Pairs{{0, 0}, {1, 1}}));
  // A full board is not sorted until something is inserted: its last entry is the latest
  // arrival (.7), not its least confident (.6), so .65 is refused.
  auto unsorted = torch::tensor({0.6, 0.4, 0.7, 0.3, 0.65, 0.35}).view({3, 2});
  EXPECT_EQ(vlmadapt::select_pseudolabels(unsorted, 2), (Pairs{{0, 0}, {1, 0}, {2, 1}}));
}

// ---- the paradigms -------------------------------------------------------------------

TEST(Paradigm, SemiSupervisedKeepsShotsPerClassAndHidesTheRest) {
  const Dataset full = toy();
  const Dataset d = split(full, paradigm("ssl", 2));
  EXPECT_EQ(d.train.size(), 8u);
  EXPECT_EQ(d.unlabelled.size(), 32u);
  EXPECT_TRUE(d.val.empty());
  EXPECT_TRUE(d.unlabelled_classes.empty());
  for (const Item& it : d.unlabelled) EXPECT_EQ(it.label, -1) << it.ref;
  auto all = refs(d.train), hidden = refs(d.unlabelled);
  all.insert(hidden.begin(), hidden.end());
  EXPECT_EQ(all, refs(full.train));  // a partition of the train split
}

TEST(Paradigm, UnsupervisedHasNoLabelledImage) {
  const Dataset d = split(toy(), paradigm("ul", 0));
  EXPECT_TRUE(d.train.empty());
  EXPECT_EQ(d.unlabelled.size(), 40u);
  EXPECT_EQ(d.test.size(), 8u);
}

TEST(Paradigm, TransductiveZeroShotSplitsTheClasses) {
  Dataset full = toy();
  full.classnames = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};  // 10 classes: 6 seen
  full.train.clear();
  for (int i = 0; i < 50; ++i) full.train.push_back({"train/" + std::to_string(i), i % 10});
  const Dataset d = split(full, paradigm("trzsl", 0));
  ASSERT_EQ(d.unlabelled_classes.size(), 4u);  // 10 - floor(0.62 * 10)
  std::set<int64_t> unseen(d.unlabelled_classes.begin(), d.unlabelled_classes.end());
  for (const Item& it : d.train) EXPECT_FALSE(unseen.count(it.label)) << it.ref;
  EXPECT_EQ(d.train.size(), 30u);
  ASSERT_EQ(d.unlabelled.size(), 20u);
  for (const Item& it : d.unlabelled) {
    const int64_t label = std::stoi(it.ref.substr(6)) % 10;  // the true label, from the toy's refs
    EXPECT_TRUE(unseen.count(label)) << it.ref;
  }
  // Another seed draws other seen classes; the same seed the same ones.
  DataOptions o = paradigm("trzsl", 0);
  EXPECT_EQ(vlmadapt::apply_paradigm(full, full, o).unlabelled_classes, d.unlabelled_classes);
  o.seed = 2;
  EXPECT_NE(vlmadapt::apply_paradigm(full, full, o).unlabelled_classes, d.unlabelled_classes);
}

TEST(Paradigm, UnlabelledLimitIsASeededSubsetInOrder) {
  DataOptions o = paradigm("ul", 0);
  o.unlabelled_limit = 10;
  const Dataset a = split(toy(), o), b = split(toy(), o);
  ASSERT_EQ(a.unlabelled.size(), 10u);
  EXPECT_EQ(refs(a.unlabelled), refs(b.unlabelled));
  for (size_t i = 1; i < a.unlabelled.size(); ++i)
    EXPECT_LT(std::stoi(a.unlabelled[i - 1].ref.substr(6)), std::stoi(a.unlabelled[i].ref.substr(6)));
}

TEST(Paradigm, BadInputNamesTheKey) {
  const Dataset full = toy();
  EXPECT_NE(vt::error_of([&] { split(full, paradigm("ssl", 0)); }).find("data.shots"), std::string::npos);
  EXPECT_NE(vt::error_of([&] { split(full, paradigm("ssl", 10)); }).find("no unlabelled images"), std::string::npos);
  EXPECT_NE(vt::error_of([&] { split(full, paradigm("selfish", 2)); }).find("data.paradigm"), std::string::npos);
  for (double f : {0.0, 1.0, -0.5, 0.1}) {  // 0.1 of 4 classes: none seen
    DataOptions o = paradigm("trzsl", 0);
    o.seen_fraction = f;
    EXPECT_NE(vt::error_of([&] { split(full, o); }).find("data.seen_fraction"), std::string::npos) << f;
  }
  DataOptions base = paradigm("ssl", 2);
  base.classes = "base";
  EXPECT_NE(vt::error_of([&] { split(full, base); }).find("data.classes"), std::string::npos);
}

TEST(Paradigm, SavedSplitKeepsTheUnlabelledImagesAndClasses) {
  Dataset full = toy();
  const Dataset d = split(full, paradigm("trzsl", 0));
  const auto dir = vt::temp_dir("paradigm_split");
  const auto file = (dir / "split.json").string();
  vlmadapt::save_split(d, file);
  const Dataset back = vlmadapt::load_split(full, file);
  EXPECT_EQ(refs(back.unlabelled), refs(d.unlabelled));
  EXPECT_EQ(back.unlabelled_classes, d.unlabelled_classes);
  for (const Item& it : back.unlabelled) EXPECT_EQ(it.label, -1);
  EXPECT_NE(vlmadapt::read_file(file).find("\"unlabelled\": [\n  \"train/"), std::string::npos);  // refs, no labels
  fs::remove_all(dir);
}

TEST(Paradigm, SeenAndUnseenTopOneFromAConfusionMatrix) {
  // Classes 0, 1 seen; 2 unseen. Seen rows: 3 + 1 right of 5 + 2; unseen: 2 of 4.
  const std::vector<std::vector<int64_t>> confusion{{3, 1, 1}, {0, 1, 1}, {1, 1, 2}};
  const auto [seen, unseen] = vlmadapt::seen_unseen_top1(confusion, {2});
  EXPECT_DOUBLE_EQ(seen, 100.0 * 4 / 7);
  EXPECT_DOUBLE_EQ(unseen, 50.0);
}

// ---- the method -----------------------------------------------------------------------

namespace {

namespace m = vlmadapt::methods;

vlmadapt::Clip& clip() { return vt::tiny_vit_clip(); }

vlmadapt::TaskContext task() {
  vlmadapt::TaskContext t;
  t.clip = clip();
  t.dataset = "fashion_mnist";
  t.classnames = {"T-shirt/top", "Trouser", "Ankle_boot"};
  return t;
}

m::PseudolabelOptions options(const std::string& strategy, const std::string& prompt = "textual") {
  m::PseudolabelOptions o;
  vlmadapt::OptionSet set("pseudolabel");
  o.bind(set);
  set.set("pseudolabel.strategy", strategy);
  set.set("pseudolabel.prompt", prompt);
  return o;
}

vlmadapt::Batch feature_batch() {
  torch::manual_seed(3);
  vlmadapt::Batch b{{}, torch::randn({4, clip()->embed_dim()}), torch::tensor({0, 1, 2, 1}, torch::kLong)};
  b.pseudo = torch::tensor({false, true, true, false});
  return b;
}

}  // namespace

TEST(PseudolabelMethod, LossWeighsEachGroupsMeanAsTheCode) {
  const auto b = feature_batch();
  struct Case { std::string strategy, paradigm; double labelled, pseudo; };
  // 10 labelled, 40 pseudolabelled images in the round.
  for (const Case& c : {Case{"fpl", "ssl", 4.0, 1.0}, Case{"grip", "ssl", 0.25, 1.0}, Case{"ifpl", "ssl", 0.25, 1.0},
                        Case{"grip", "trzsl", 1.0, 0.25}, Case{"fpl", "ul", 1.0, 1.0}}) {
    torch::manual_seed(0);
    m::Pseudolabel method(options(c.strategy));
    method.setup(task());
    method.on_round_begin({0, 10, 10, 40, c.paradigm});
    EXPECT_EQ(method.weights(), std::make_pair(c.labelled, c.pseudo)) << c.strategy << " " << c.paradigm;
    const auto ce = torch::nn::functional::cross_entropy(
        method.logits(b), b.labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    const auto expected = c.labelled * (ce[0] + ce[3]) / 2 + c.pseudo * (ce[1] + ce[2]) / 2;
    EXPECT_TRUE(torch::allclose(method.loss(b), expected, 1e-6, 1e-6)) << c.strategy << " " << c.paradigm;
  }
  // Without pseudolabels in a batch only the labelled term remains (and the reverse).
  m::Pseudolabel method(options("fpl"));
  method.setup(task());
  auto labelled_only = b;
  labelled_only.pseudo = torch::zeros({4}, torch::kBool);
  const auto ce = torch::nn::functional::cross_entropy(method.logits(b), b.labels);
  EXPECT_TRUE(torch::allclose(method.loss(labelled_only), ce, 1e-6, 1e-6));
}

TEST(PseudolabelMethod, GripGrowsItsPseudolabelsAndTheOthersKeepK) {
  m::Pseudolabel grip(options("grip")), ifpl(options("ifpl")), fpl(options("fpl"));
  // |U| = 1000, 10 classes: num_samples = 100, K_t = (t + 1) * 100 / 10, capped at |U| / C.
  for (int64_t r = 0; r < 10; ++r) EXPECT_EQ(grip.pseudolabels_per_class(r, 1000, 10), 10 * (r + 1)) << r;
  EXPECT_EQ(grip.pseudolabels_per_class(14, 1000, 10), 100);
  EXPECT_EQ(grip.pseudolabels_per_class(0, 1005, 7), 14);  // floors: 1005 / 10 = 100, 100 / 7 = 14
  EXPECT_EQ(ifpl.pseudolabels_per_class(5, 1000, 10), 16);
  EXPECT_EQ(fpl.pseudolabel_rounds(), 1);
  EXPECT_EQ(grip.pseudolabel_rounds(), 10);
  EXPECT_EQ(ifpl.pseudolabel_rounds(), 10);
}

TEST(PseudolabelMethod, IterativeStrategiesRestartEveryRoundFromTheInitialPrompt) {
  for (const std::string strategy : {"ifpl", "grip", "fpl"}) {
    torch::manual_seed(0);
    m::Pseudolabel method(options(strategy));
    method.setup(task());
    const auto initial = method.state().at("prompt_learner.ctx").clone();
    {
      torch::NoGradGuard no_grad;
      method.trainable_parameters().at(0).add_(1.0);
    }
    method.on_round_begin({1, 10, 10, 40, "ssl"});
    EXPECT_EQ(torch::equal(method.state().at("prompt_learner.ctx"), initial), strategy != "fpl") << strategy;
  }
}

TEST(PseudolabelMethod, RoundZeroScoresAsZeroShotClipWithTheTemplate) {
  torch::manual_seed(0);
  m::Pseudolabel method(options("grip"));
  method.setup(task());
  auto zeroshot = vlmadapt::make_method("zeroshot", {{"zeroshot.templates", "a photo of a {}"}});
  auto t = task();
  t.classnames = {"T-shirt/top", "Trouser", "Ankle boot"};  // '_' is read as ' '
  zeroshot->setup(t);
  const auto b = feature_batch();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(method.pseudolabel_logits(b, 0), zeroshot->logits(b), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(method.pseudolabel_logits(b, 1), zeroshot->logits(b), 1e-2, 1e-2));  // the prompt's
}

TEST(PseudolabelMethod, VisualPromptsAreImageTokensBeforeAFixedClassifier) {
  torch::manual_seed(0);
  m::Pseudolabel method(options("fpl", "visual"));
  method.setup(task());
  EXPECT_EQ(method.contract().input, vlmadapt::Input::Pixels);
  const auto params = method.named_parameters(true);
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params.begin()->key(), "visual_prompt");
  EXPECT_EQ(params.begin()->value().sizes(), (std::vector<int64_t>{16, clip()->config().vision_width}));
  torch::manual_seed(5);
  vlmadapt::Batch b{torch::randn({2, 3, clip()->image_resolution(), clip()->image_resolution()}), {}, {}};
  torch::NoGradGuard no_grad;
  const auto prompted = method.logits(b), plain = method.pseudolabel_logits(b, 0);
  EXPECT_FALSE(torch::allclose(prompted, plain, 1e-3, 1e-3));
  m::Pseudolabel resnet(options("fpl", "visual"));
  auto t = task();
  t.clip = vlmadapt::load_clip(vt::tiny_rn());
  EXPECT_NE(vt::error_of([&] { resnet.setup(t); }).find("pseudolabel.prompt"), std::string::npos);
}

// ---- rounds in the shared loop ---------------------------------------------------------

namespace {

int cli(const std::vector<std::string>& args, std::string* out = nullptr) { return vt::run_cli(args, out); }

std::string round_recipe(const fs::path& dir) {
  const auto path = dir / "pl.ini";
  std::ofstream(path) << "method = pseudolabel\noutput = " << (dir / "runs").string() << "\n"
                      << "[data]\ndataset = fashion_mnist\nparadigm = ssl\nshots = 2\nunlabelled_limit = 40\n"
                      << "test_limit = 100\n[model]\ncheckpoint = " << vt::tiny_vit() << "\n"
                      << "[train]\nepochs = 2\nbatch_size = 8\nlr = 0.1\naugment = false\nselection = none\n"
                      << "[pseudolabel]\nstrategy = grip\nrounds = 3\n";
  return path.string();
}

fs::path round_run(const fs::path& dir, const std::string& name) {
  return dir / "runs" / "fashion_mnist" / "pseudolabel" / (name + "_2shot") / "seed1";
}

}  // namespace

TEST(PseudolabelRounds, KilledBetweenAndInsideRoundsResumesToTheSamePrompt) {
  const auto dir = vt::temp_dir("pseudolabel_rounds");
  const auto recipe = round_recipe(dir);
  std::string log;
  ASSERT_EQ(cli({"train", "--recipe", recipe, "--set", "name=straight"}, &log), 0) << log;
  EXPECT_NE(log.find("pseudolabel round 3/3: 20 labelled + "), std::string::npos) << log;
  const auto straight = round_run(dir, "straight");
  const auto expected = vlmadapt::read_safetensors((straight / "method.safetensors").string());
  // GRIP's rounds grow: 40 / 3 = 13 more images a round over 10 classes -> K = 13/10, 26/10, 39/10.
  for (int r = 1; r <= 3; ++r) {
    const auto labels = nlohmann::json::parse(
        vlmadapt::read_file((straight / "rounds" / ("round_" + std::to_string(r)) / "pseudolabels.json").string()));
    EXPECT_EQ(labels["per_class"].get<int>(), r) << r;
    EXPECT_GE(labels["pseudolabels"].size(), 10u * r) << r;  // K per class at least (an image may hold several)
  }
  // Killed after round 1 is committed, then inside round 2 (mid-epoch), then inside round
  // 2's first checkpoint; each time resumed with --resume.
  const auto killed = round_run(dir, "killed");
  for (const std::string at : {"round:1", "step:3", "checkpoint:1", ""}) {
    const std::string cmd = (at.empty() ? "" : "VLMADAPT_KILL_AT=" + at + " ") + vt::cli_path() + " train --recipe " +
                            recipe + " --set name=killed" + (at == "round:1" ? "" : " --resume") + " > /dev/null 2>&1";
    const int status = std::system(cmd.c_str());
    if (at.empty()) {
      ASSERT_EQ(status, 0);
      break;
    }
    ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + 9)) << at << ": " << status;
    const auto latest = nlohmann::json::parse(vlmadapt::read_file((killed / "rounds" / "latest.json").string()));
    EXPECT_EQ(latest["round"], 1) << at;
  }
  const auto resumed = vlmadapt::read_safetensors((killed / "method.safetensors").string());
  for (const auto& [key, t] : expected) EXPECT_TRUE(torch::equal(t, resumed.at(key))) << key;
  for (const auto& e : fs::recursive_directory_iterator(killed))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  fs::remove_all(dir);
}

TEST(PseudolabelRounds, TransductiveZeroShotReportsTheHarmonicMeanAndNeedsUnlabelledImages) {
  const auto dir = vt::temp_dir("pseudolabel_trzsl");
  const auto recipe = round_recipe(dir);
  std::string log;
  ASSERT_EQ(cli({"train", "--recipe", recipe, "--set", "name=trzsl", "data.paradigm=trzsl", "data.shots=1",
                 "pseudolabel.rounds=1"}, &log), 0) << log;
  const auto metrics = nlohmann::json::parse(vlmadapt::read_file((dir / "runs" / "fashion_mnist" / "pseudolabel" /
                                                                  "trzsl_1shot" / "seed1" / "metrics.json").string()));
  const double seen = metrics["seen"].get<double>(), unseen = metrics["unseen"].get<double>();
  EXPECT_NEAR(metrics["harmonic_mean"].get<double>(), seen + unseen == 0 ? 0 : 2 * seen * unseen / (seen + unseen), 1e-9);
  EXPECT_NE(cli({"train", "--recipe", recipe, "--set", "name=sup", "data.paradigm=supervised"}, &log), 0);
  EXPECT_NE(log.find("data.paradigm = supervised gives none"), std::string::npos) << log;
  fs::remove_all(dir);
}

// train.augment = false trains on the cached test-view features of every train item,
// however the item count falls into evaluation batches (40 items in batches of 16: the
// last batch is partial and must not be dropped).
TEST(PseudolabelRounds, TrainingWithoutAugmentationSeesEveryItemsFeatures) {
  const auto dir = vt::temp_dir("no_augment");
  const auto recipe = round_recipe(dir);
  std::string log;
  ASSERT_EQ(cli({"train", "--recipe", recipe, "--set", "name=coop", "method=coop", "data.paradigm=supervised",
                 "data.shots=4", "eval.batch_size=16", "coop.n_ctx=4"}, &log), 0) << log;
  const auto run = dir / "runs" / "fashion_mnist" / "coop" / "coop_4shot" / "seed1";
  const auto m = nlohmann::json::parse(vlmadapt::read_file((run / "run.json").string()));
  EXPECT_GT(m["final_loss"].get<double>(), 0);
  fs::remove_all(dir);
}
