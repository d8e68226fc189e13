// The built-in default model (models/default.safetensors, made by `vlmadapt pretrain
// --recipe recipes/pretrain/fashion_mnist.ini`): it is an ordinary open_clip checkpoint
// within the size limit, and its zero-shot accuracy on Fashion-MNIST lies in the band
// that leaves room for adaptation.
#include <gtest/gtest.h>

#include <filesystem>

#include <vlmadapt/checkpoint.h>
#include <vlmadapt/dataset.h>
#include <vlmadapt/features.h>
#include <vlmadapt/prompts.h>
#include <vlmadapt/run.h>

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

}  // namespace
}  // namespace vlmadapt
