// The one place where the shared code reads a method's contract (method.h): what a
// batch carries, which evaluation path a split takes, how one test image is predicted,
// and the stream hooks. The loop, the evaluator, the stream and the bench call these.
#pragma once
#include <torch/torch.h>

#include <vlmadapt/adapt/method.h>

namespace vlmadapt {

// The method's batch of images: their frozen features (computed without a graph) when
// it takes features, else their pixels.
Batch method_batch(Method& method, Clip& clip, const torch::Tensor& pixels, const torch::Tensor& labels);

// How the evaluator scores a split: frozen features from the cache, pixel batches, or
// one test image at a time (methods that adapt).
enum class EvalPath { CachedFeatures, PixelBatches, PerImage };
EvalPath eval_path(const Contract& contract);

// Views each test image needs: `views` for methods that adapt, else only the test view.
int views_per_image(const Contract& contract, int views);

// Test images in stream order: on_stream_begin() when it opens, predict() per image
// (the adapted prediction, or view 0's logits for methods that do not adapt), and
// on_stream_end() at finish().
class ImageStream {
 public:
  ImageStream(Method& method, Clip clip);
  // Views [V,3,R,R] of one image (view 0 the test view) -> logits [1,C], detached.
  torch::Tensor predict(const torch::Tensor& views, const torch::Tensor& label = {}) {
    return predict(batch(views, label));
  }
  // The same in two steps, so that a caller may keep the views' frozen features
  // (several stream orders over the same images encode each image once).
  Batch batch(const torch::Tensor& views, const torch::Tensor& label = {});
  torch::Tensor predict(Batch views);
  void finish();

 private:
  Method& method_;
  Clip clip_;
  Contract contract_;
  bool finished_ = false;
};

}  // namespace vlmadapt
