// The threaded batch loader: shapes, CoOp's drop_last, identical tensors whatever the
// worker count, per-epoch augmentation, errors surfacing from next(), clean shutdown.
#include "test_util.h"
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/data/image.h>
#include <vlmadapt/data/loader.h>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <future>
#include <thread>

namespace vt = vlmadapt::testing;
namespace fs = std::filesystem;
using vlmadapt::BatchLoader;
using vlmadapt::Dataset;
using vlmadapt::Error;
using vlmadapt::Item;
using vlmadapt::LoaderOptions;
using vlmadapt::PixelBatch;

namespace {

// n in-memory RGB images of varied sizes, "img<k>" -> a pattern depending on k.
Dataset synthetic(int n, std::chrono::milliseconds delay = {}) {
  Dataset d;
  d.name = "synthetic";
  d.classnames = {"a", "b", "c"};
  for (int k = 0; k < n; ++k) d.train.push_back({"img" + std::to_string(k), k % 3});
  d.load = [delay](const std::string& ref) {
    if (delay.count()) std::this_thread::sleep_for(delay);
    const int k = std::stoi(ref.substr(3));
    cv::Mat m(40 + k % 7, 50 + k % 5, CV_8UC3);
    for (int y = 0; y < m.rows; ++y)
      for (int x = 0; x < m.cols; ++x)
        m.at<cv::Vec3b>(y, x) = cv::Vec3b(uchar(x * 5 + k), uchar(y * 3), uchar((x * y + 7 * k) % 256));
    return vlmadapt::Image{m, vlmadapt::PixelMode::RGB};
  };
  return d;
}

LoaderOptions small(int batch, int workers) {
  LoaderOptions o;
  o.n_px = 32;
  o.batch_size = batch;
  o.workers = workers;
  return o;
}

std::vector<PixelBatch> drain(BatchLoader& loader) {
  std::vector<PixelBatch> out;
  PixelBatch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

std::vector<PixelBatch> epoch_of(const Dataset& d, LoaderOptions o) {
  BatchLoader loader(d, d.train, o);
  return drain(loader);
}

using vlmadapt::testing::error_of;

}  // namespace

TEST(Loader, BatchShapesLabelsAndOrder) {
  const Dataset d = synthetic(10);
  BatchLoader loader(d, d.train, small(4, 2));
  EXPECT_EQ(loader.num_batches(), 3);
  EXPECT_EQ(loader.num_items(), 10);
  const auto batches = drain(loader);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].pixels.sizes(), (std::vector<int64_t>{4, 3, 32, 32}));
  EXPECT_EQ(batches[2].pixels.sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  EXPECT_EQ(batches[0].pixels.dtype(), torch::kFloat);
  EXPECT_EQ(batches[2].indices, (std::vector<int64_t>{8, 9}));
  for (const auto& b : batches)
    for (size_t i = 0; i < b.indices.size(); ++i)
      EXPECT_EQ(b.labels[int64_t(i)].item<int64_t>(), d.train[size_t(b.indices[i])].label);
  PixelBatch extra;
  EXPECT_FALSE(loader.next(extra));
}

TEST(Loader, DropLastAsCoop) {
  const Dataset d = synthetic(10);
  LoaderOptions o = small(4, 1);
  o.drop_last = true;
  BatchLoader loader(d, d.train, o);
  EXPECT_EQ(loader.num_batches(), 2);
  EXPECT_EQ(loader.num_items(), 8);
  EXPECT_EQ(drain(loader).size(), 2u);
  // Fewer items than one batch: Dassl keeps them (drop_last only when len >= batch).
  BatchLoader few(d, {d.train.begin(), d.train.begin() + 3}, o);
  EXPECT_EQ(few.num_batches(), 1);
  BatchLoader none(d, {}, o);
  PixelBatch b;
  EXPECT_FALSE(none.next(b));
}

TEST(Loader, TestViewIsTheReferenceTransform) {
  const Dataset d = synthetic(3);
  const auto batches = epoch_of(d, small(3, 2));
  for (int k = 0; k < 3; ++k) {
    const auto expected = vlmadapt::normalize(vlmadapt::resize_crop(d.load(d.train[size_t(k)].ref), 32));
    EXPECT_TRUE(torch::equal(batches[0].pixels[k], expected)) << k;
    EXPECT_TRUE(torch::equal(vlmadapt::load_view(d, d.train[size_t(k)], small(1, 0), 99), expected));
  }
}

TEST(Loader, SameSeedAndEpochGiveIdenticalTensorsWhateverTheWorkers) {
  const Dataset d = synthetic(23);
  LoaderOptions o = small(5, 1);
  o.augment = true;
  o.shuffle = true;
  o.seed = 11;
  o.epoch = 3;
  const auto one = epoch_of(d, o);
  for (int workers : {0, 2, 3}) {
    o.workers = workers;
    o.prefetch = workers == 3 ? 1 : 4;
    const auto other = epoch_of(d, o);
    ASSERT_EQ(other.size(), one.size());
    for (size_t b = 0; b < one.size(); ++b) {
      EXPECT_EQ(other[b].indices, one[b].indices);
      EXPECT_TRUE(torch::equal(other[b].pixels, one[b].pixels)) << "workers " << workers << " batch " << b;
      EXPECT_TRUE(torch::equal(other[b].labels, one[b].labels));
    }
  }
  // Each image is load_view with the seed of (seed, epoch, item index).
  const int64_t idx = one[1].indices[2];
  EXPECT_TRUE(torch::equal(one[1].pixels[2], vlmadapt::load_view(d, d.train[size_t(idx)], o,
                                                                  vlmadapt::view_seed(11, 3, idx))));
}

TEST(Loader, DifferentEpochGivesDifferentOrderAndAugmentation) {
  const Dataset d = synthetic(12);
  LoaderOptions o = small(12, 2);
  o.augment = true;
  o.shuffle = true;
  o.seed = 4;
  const auto e0 = epoch_of(d, o);
  o.epoch = 1;
  const auto e1 = epoch_of(d, o);
  EXPECT_NE(e0[0].indices, e1[0].indices);
  int differ = 0;
  for (int64_t i = 0; i < 12; ++i) {  // the same item in both epochs
    const auto p0 = std::find(e0[0].indices.begin(), e0[0].indices.end(), i) - e0[0].indices.begin();
    const auto p1 = std::find(e1[0].indices.begin(), e1[0].indices.end(), i) - e1[0].indices.begin();
    differ += !torch::equal(e0[0].pixels[p0], e1[0].pixels[p1]);
  }
  EXPECT_GE(differ, 11);
  o.seed = 5;  // and another seed
  EXPECT_NE(epoch_of(d, o)[0].indices, e1[0].indices);
}

TEST(Loader, DestructionMidEpochDoesNotHang) {
  const Dataset d = synthetic(400, std::chrono::milliseconds(3));
  auto done = std::make_shared<std::promise<void>>();
  std::thread([d, done] {
    {
      BatchLoader loader(d, d.train, small(8, 2));
      PixelBatch b;
      loader.next(b);
    }  // destroyed with workers busy on the next batches
    { BatchLoader untouched(d, d.train, small(8, 3)); }
    done->set_value();
  }).detach();
  const auto status = done->get_future().wait_for(std::chrono::seconds(30));
  ASSERT_EQ(status, std::future_status::ready) << "BatchLoader destructor hung";
}

TEST(Loader, MissingImageSurfacesAsErrorNamingThePath) {
  const fs::path dir = vt::temp_dir("loader_missing");
  cv::imwrite((dir / "a.png").string(), cv::Mat(20, 20, CV_8UC3, cv::Scalar(1, 2, 3)));
  std::ofstream(dir / "names.txt") << "x\n";
  std::ofstream(dir / "items.csv") << "a.png,0\nb.png,0\na.png,0\n";
  vlmadapt::DataOptions o;
  o.dataset = "list";
  o.split_file = (dir / "items.csv").string();
  o.classnames_file = (dir / "names.txt").string();
  const Dataset d = vlmadapt::open_dataset(o);
  for (int workers : {0, 2}) {
    BatchLoader loader(d, d.test, small(1, workers));
    PixelBatch b;
    ASSERT_TRUE(loader.next(b));  // a.png
    const std::string message = error_of([&] { loader.next(b); });
    EXPECT_NE(message.find((dir / "b.png").string()), std::string::npos) << message;
    EXPECT_NE(error_of([&] { loader.next(b); }), "");  // the error stays
  }
}

TEST(Loader, ForeignExceptionsBecomeErrorsNamingTheItem) {
  Dataset d = synthetic(6);
  d.load = [](const std::string& ref) -> vlmadapt::Image {
    if (ref == "img4") throw std::runtime_error("boom");
    return vlmadapt::Image{cv::Mat(8, 8, CV_8UC3, cv::Scalar(9, 9, 9)), vlmadapt::PixelMode::RGB};
  };
  BatchLoader loader(d, d.train, small(2, 2));
  PixelBatch b;
  EXPECT_TRUE(loader.next(b));
  EXPECT_TRUE(loader.next(b));
  const std::string message = error_of([&] { loader.next(b); });
  EXPECT_NE(message.find("img4"), std::string::npos) << message;
  EXPECT_NE(message.find("boom"), std::string::npos) << message;
  EXPECT_NE(error_of([] { BatchLoader bad(synthetic(1), {}, small(0, 1)); }).find("batch_size"),
            std::string::npos);
}

TEST(Loader, FashionMnistGreyscaleBatches) {
  vlmadapt::DataOptions o;
  const Dataset d = vlmadapt::open_dataset(o);
  LoaderOptions lo = small(8, 2);
  lo.augment = true;
  BatchLoader loader(d, {d.test.begin(), d.test.begin() + 16}, lo);
  const auto batches = drain(loader);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[1].pixels.sizes(), (std::vector<int64_t>{8, 3, 32, 32}));
  // Grey images: the three channels agree once normalisation is undone.
  const auto& n = lo.norm;
  const auto mean = torch::tensor({n.mean[0], n.mean[1], n.mean[2]}).view({1, 3, 1, 1});
  const auto stdv = torch::tensor({n.std[0], n.std[1], n.std[2]}).view({1, 3, 1, 1});
  const auto raw = (batches[0].pixels * stdv + mean) * 255;
  EXPECT_LT((raw.select(1, 0) - raw.select(1, 2)).abs().max().item<float>(), 1e-3);
  EXPECT_EQ(batches[0].labels[0].item<int64_t>(), 9);  // test/0 is an ankle boot
}
