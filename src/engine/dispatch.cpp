#include <vlmadapt/engine/dispatch.h>

namespace vlmadapt {

Batch method_batch(Method& method, Clip& clip, const torch::Tensor& pixels, const torch::Tensor& labels) {
  Batch b;
  b.labels = labels;
  if (method.contract().input == Input::Pixels) {
    b.pixels = pixels;
  } else {
    torch::NoGradGuard no_grad;  // the image tower is frozen: no graph through it
    b.image_features = clip->encode_image(pixels);
  }
  return b;
}

EvalPath eval_path(const Contract& contract) {
  if (contract.adapts()) return EvalPath::PerImage;
  return contract.input == Input::Pixels ? EvalPath::PixelBatches : EvalPath::CachedFeatures;
}

int views_per_image(const Contract& contract, int views) { return contract.adapts() ? views : 1; }

ImageStream::ImageStream(Method& method, Clip clip) : method_(method), clip_(std::move(clip)), contract_(method.contract()) {
  method_.on_stream_begin();
}

Batch ImageStream::batch(const torch::Tensor& views, const torch::Tensor& label) {
  Batch b = method_batch(method_, clip_, views, label);
  b.pixels = views;  // methods with a second model (RLCF's reward) need them too
  return b;
}

torch::Tensor ImageStream::predict(Batch b) {
  if (contract_.adapts()) return method_.adapt_and_predict(b).detach();
  torch::NoGradGuard no_grad;
  b.pixels = b.pixels.narrow(0, 0, 1);
  if (b.image_features.defined()) b.image_features = b.image_features.narrow(0, 0, 1);
  return method_.logits(b);
}

void ImageStream::finish() {
  if (finished_) return;
  finished_ = true;
  method_.on_stream_end();
}

}  // namespace vlmadapt
