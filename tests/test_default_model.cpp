// The built-in default model (models/default.safetensors, made by `vlmadapt pretrain
// --recipe recipes/pretrain/fashion_mnist.ini`): it is an ordinary open_clip checkpoint
// within the size limit, and its zero-shot accuracy on Fashion-MNIST lies in the band
// that leaves room for adaptation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/features.h>
#include "pretrain/pretrain.h"
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/engine/run.h>

#include "test_util.h"

namespace vlmadapt {
namespace {

std::string default_model() { return (testing::source_dir() / "models" / "default.safetensors").string(); }

TEST(DefaultModel, IsAnOpenClipFileOfAtMost12MB) {
  ASSERT_TRUE(std::filesystem::exists(default_model())) << default_model();
  EXPECT_LE(std::filesystem::file_size(default_model()), 12u * 1000 * 1000);
  Checkpoint ck = read_checkpoint(default_model());
  EXPECT_EQ(ck.format, CheckpointFormat::OpenClipSafetensors);
  EXPECT_TRUE(ck.config.vision_vit);
  EXPECT_EQ(ck.config.image_resolution, 28);
}

TEST(DefaultModel, ResolvesByName) {
  EXPECT_TRUE(std::filesystem::equivalent(resolve_checkpoint("default"), default_model()));
}

// Zero-shot top-1 with the dataset's default template over the first 2,000 test images.
TEST(DefaultModel, ZeroShotAccuracyIsInItsBand) {
  Clip clip = load_clip(default_model());
  DataOptions o;
  o.dataset = "fashion_mnist";
  Dataset data = open_dataset(o);
  std::vector<Item> items(data.test.begin(), data.test.begin() + 2000);
  LoaderOptions lo;
  lo.n_px = static_cast<int>(clip->image_resolution());
  lo.batch_size = 500;
  FeatureSet fs = compute_features(clip, data, items, lo);
  Tokenizer tok;
  torch::NoGradGuard no_grad;
  auto classifier = class_text_features(clip, tok, data.classnames, {data.templates.front()});
  auto logits = cosine_logits(clip, fs.features, classifier);
  ASSERT_TRUE(torch::isfinite(logits).all().item<bool>());
  const double top1 = logits.argmax(-1).eq(fs.labels).to(torch::kDouble).mean().item<double>() * 100;
  EXPECT_GE(top1, 45.0);
  EXPECT_LE(top1, 85.0);
  // Well above chance on every half of the subset, not one lucky block.
  for (int64_t half : {0, 1}) {
    auto part = logits.narrow(0, half * 1000, 1000).argmax(-1).eq(fs.labels.narrow(0, half * 1000, 1000));
    EXPECT_GT(part.to(torch::kDouble).mean().item<double>(), 0.3);
  }
}

// The pretraining path end to end at toy size: it writes a checkpoint load_clip reads.
TEST(Pretrain, SmallRunWritesALoadableModel) {
  const auto dir = testing::temp_dir("pretrain");
  PretrainOptions o;
  o.max_images = 512;
  o.epochs = 1;
  o.batch_size = 128;
  o.vision_width = 64;
  o.vision_layers = 1;
  o.text_layers = 1;
  o.embed_dim = 32;
  o.warmup_steps = 2;
  o.crop_scale_min = 0.5;
  o.output = (dir / "tiny.safetensors").string();
  std::ostringstream log;
  const double loss = pretrain(o, log);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_LT(loss, 2 * std::log(128.0));
  Clip clip = load_clip(o.output);
  EXPECT_EQ(clip->image_resolution(), 28);
  EXPECT_EQ(clip->embed_dim(), 32);
  EXPECT_NE(log.str().find("on 512 images, 4 steps"), std::string::npos) << log.str();
}

TEST(Pretrain, RecipeErrorsNameTheKey) {
  const auto dir = testing::temp_dir("pretrain_recipe");
  std::ofstream(dir / "bad.ini") << "[pretrain]\nepochz = 3\n";
  const auto message = testing::error_of([&] { load_pretrain_recipe((dir / "bad.ini").string()); });
  EXPECT_NE(message.find("unknown key 'pretrain.epochz'"), std::string::npos) << message;
  EXPECT_NE(message.find("pretrain.epochs"), std::string::npos) << message;
  EXPECT_NE(testing::error_of([] { load_pretrain_recipe("/nonexistent/p.ini"); }).find("/nonexistent/p.ini"), std::string::npos);
  PretrainOptions ok = load_pretrain_recipe((testing::source_dir() / "recipes/pretrain/fashion_mnist.ini").string(),
                                            {"pretrain.epochs=2"});
  EXPECT_EQ(ok.epochs, 2);
  EXPECT_EQ(ok.crop_scale_min, 0.08);
}

}  // namespace
}  // namespace vlmadapt
