// The two image towers of CLIP: VisionTransformer and ModifiedResNet with attention pooling.
#include <cmath>

#include <vlmadapt/core/error.h>

#include "clip_layers.h"

namespace vlmadapt::detail {
namespace {

namespace nn = torch::nn;

class VisionTransformer : public VisionTower {
 public:
  explicit VisionTransformer(const ClipConfig& c) {
    const int64_t w = c.vision_width, grid = c.image_resolution / c.vision_patch_size;
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(3, w, c.vision_patch_size)
                                                     .stride(c.vision_patch_size)
                                                     .bias(false)));
    class_embedding_ = register_parameter("class_embedding", torch::zeros({w}));
    positional_embedding_ = register_parameter("positional_embedding", torch::zeros({grid * grid + 1, w}));
    ln_pre_ = register_module("ln_pre", nn::LayerNorm(nn::LayerNormOptions({w}).eps(c.layer_norm_eps)));
    transformer_ = register_module(
        "transformer", std::make_shared<Transformer>(w, c.vision_layers.at(0), c.vision_heads, c));
    ln_post_ = register_module("ln_post", nn::LayerNorm(nn::LayerNormOptions({w}).eps(c.layer_norm_eps)));
    proj_ = register_parameter("proj", torch::zeros({w, c.embed_dim}));
  }

  torch::Tensor forward(const torch::Tensor& pixels) override {
    auto x = patches(pixels.to(conv1_->weight.scalar_type()));  // [N,W,g,g]
    x = x.flatten(2).transpose(1, 2);                                  // [N,g*g,W]
    auto cls = class_embedding_.to(x.scalar_type()).expand({x.size(0), 1, x.size(2)});
    x = torch::cat({cls, x}, 1) + positional_embedding_.to(x.scalar_type());
    // Deep prompts (VPT-deep, MaPLe): layer 0's go after the patches, without a positional
    // embedding, and through ln_pre with the rest; the transformer replaces them later.
    const auto& prompts = transformer_->hooks().deep;
    if (!prompts.empty() && prompts[0].defined())
      x = torch::cat({x, prompts[0].to(x.scalar_type()).unsqueeze(0).expand({x.size(0), -1, -1})}, 1);
    x = transformer_->forward(layer_norm(ln_pre_, x), {}, /*first_token_only=*/true);
    // ln_post only on the class token: the other tokens are never used.
    return torch::matmul(layer_norm(ln_post_, x.select(1, 0)), proj_);
  }

  Transformer* transformer() override { return transformer_.get(); }

 private:
  // The patch embedding: conv1 as stored, or, with a modifier, the same convolution (no
  // bias, stride = patch, no padding) of the modified weight.
  torch::Tensor patches(const torch::Tensor& x) {
    if (!patch_modifier) return conv1_->forward(x);
    auto w = patch_modifier(conv1_->weight);
    if (!w.defined() || w.sizes() != conv1_->weight.sizes())
      throw Error("weight modifier of 'visual.conv1.weight' returned " +
                  (w.defined() ? c10::str(w.sizes()) : std::string("an undefined tensor")) +
                  ", expected the weight's shape " + c10::str(conv1_->weight.sizes()));
    const auto& o = conv1_->options;
    return torch::conv2d(x, w, {}, o.stride(), c10::get<torch::ExpandingArray<2>>(o.padding()), o.dilation(),
                         o.groups());
  }

  nn::Conv2d conv1_{nullptr};
  torch::Tensor class_embedding_, positional_embedding_, proj_;
  nn::LayerNorm ln_pre_{nullptr}, ln_post_{nullptr};
  std::shared_ptr<Transformer> transformer_;
};

nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false));
}

torch::Tensor avg_pool(const torch::Tensor& x, int64_t k) {
  return k > 1 ? torch::avg_pool2d(x, {k, k}) : x;
}

// `downsample`: AvgPool2d(stride) (key "-1", no parameters), "0": 1x1 conv, "1": BN.
class Downsample : public nn::Module {
 public:
  Downsample(int64_t in, int64_t out, int64_t stride) : stride_(stride) {
    conv_ = register_module("0", conv(in, out, 1));
    bn_ = register_module("1", nn::BatchNorm2d(out));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn_->forward(conv_->forward(avg_pool(x, stride_))); }

 private:
  int64_t stride_;
  nn::Conv2d conv_{nullptr};
  nn::BatchNorm2d bn_{nullptr};
};

class Bottleneck : public nn::Module {
 public:
  static constexpr int64_t kExpansion = 4;
  Bottleneck(int64_t inplanes, int64_t planes, int64_t stride) : stride_(stride) {
    conv1_ = register_module("conv1", conv(inplanes, planes, 1));
    bn1_ = register_module("bn1", nn::BatchNorm2d(planes));
    conv2_ = register_module("conv2", conv(planes, planes, 3));
    bn2_ = register_module("bn2", nn::BatchNorm2d(planes));
    conv3_ = register_module("conv3", conv(planes, planes * kExpansion, 1));
    bn3_ = register_module("bn3", nn::BatchNorm2d(planes * kExpansion));
    if (stride > 1 || inplanes != planes * kExpansion)
      downsample_ = register_module("downsample", std::make_shared<Downsample>(inplanes, planes * kExpansion, stride));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto out = torch::relu(bn1_->forward(conv1_->forward(x)));
    out = torch::relu(bn2_->forward(conv2_->forward(out)));
    out = bn3_->forward(conv3_->forward(avg_pool(out, stride_)));
    return torch::relu(out + (downsample_ ? downsample_->forward(x) : x));
  }

 private:
  int64_t stride_;
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  std::shared_ptr<Downsample> downsample_;
};

// Multi-head attention whose only query is the mean token.
class AttentionPool2d : public nn::Module {
 public:
  AttentionPool2d(int64_t spacial_dim, int64_t embed_dim, int64_t heads, int64_t output_dim)
      : heads_(heads) {
    positional_embedding_ =
        register_parameter("positional_embedding", torch::zeros({spacial_dim * spacial_dim + 1, embed_dim}));
    k_proj_ = register_module("k_proj", nn::Linear(embed_dim, embed_dim));
    q_proj_ = register_module("q_proj", nn::Linear(embed_dim, embed_dim));
    v_proj_ = register_module("v_proj", nn::Linear(embed_dim, embed_dim));
    c_proj_ = register_module("c_proj", nn::Linear(embed_dim, output_dim));
  }
  torch::Tensor forward(const torch::Tensor& features) {
    auto x = features.flatten(2).transpose(1, 2);                   // [N,HW,C]
    x = torch::cat({x.mean(1, /*keepdim=*/true), x}, 1) + positional_embedding_;  // [N,HW+1,C]
    const int64_t n = x.size(0), l = x.size(1), c = x.size(2), hd = c / heads_;
    auto q = q_proj_->forward(x.narrow(1, 0, 1)).view({n, 1, heads_, hd}).transpose(1, 2);
    auto k = k_proj_->forward(x).view({n, l, heads_, hd}).transpose(1, 2);
    auto v = v_proj_->forward(x).view({n, l, heads_, hd}).transpose(1, 2);
    q = q * (1.0 / std::sqrt(static_cast<double>(hd)));
    auto attn = torch::softmax(torch::matmul(q, k.transpose(-2, -1)), -1);
    auto out = torch::matmul(attn, v).transpose(1, 2).reshape({n, c});
    return c_proj_->forward(out);
  }

 private:
  int64_t heads_;
  torch::Tensor positional_embedding_;
  nn::Linear k_proj_{nullptr}, q_proj_{nullptr}, v_proj_{nullptr}, c_proj_{nullptr};
};

class ModifiedResNet : public VisionTower {
 public:
  explicit ModifiedResNet(const ClipConfig& c) {
    const int64_t w = c.vision_width;
    conv1_ = register_module("conv1", conv(3, w / 2, 3, 2));
    bn1_ = register_module("bn1", nn::BatchNorm2d(w / 2));
    conv2_ = register_module("conv2", conv(w / 2, w / 2, 3));
    bn2_ = register_module("bn2", nn::BatchNorm2d(w / 2));
    conv3_ = register_module("conv3", conv(w / 2, w, 3));
    bn3_ = register_module("bn3", nn::BatchNorm2d(w));
    int64_t inplanes = w;
    for (int64_t stage = 0; stage < 4; ++stage) {
      const int64_t planes = w << stage, stride = stage == 0 ? 1 : 2;
      auto layer = register_module("layer" + std::to_string(stage + 1), nn::ModuleList());
      for (int64_t b = 0; b < c.vision_layers.at(stage); ++b) {
        auto block = std::make_shared<Bottleneck>(inplanes, planes, b == 0 ? stride : 1);
        inplanes = planes * Bottleneck::kExpansion;
        layer->push_back(block);
        blocks_.push_back(block);
      }
    }
    attnpool_ = register_module("attnpool", std::make_shared<AttentionPool2d>(
                                                c.image_resolution / 32, w * 32, c.vision_heads, c.embed_dim));
  }

  torch::Tensor forward(const torch::Tensor& pixels) override {
    auto x = pixels.to(conv1_->weight.scalar_type());
    x = torch::relu(bn1_->forward(conv1_->forward(x)));
    x = torch::relu(bn2_->forward(conv2_->forward(x)));
    x = torch::relu(bn3_->forward(conv3_->forward(x)));
    x = avg_pool(x, 2);
    for (auto& block : blocks_) x = block->forward(x);
    return attnpool_->forward(x);
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  std::vector<std::shared_ptr<Bottleneck>> blocks_;
  std::shared_ptr<AttentionPool2d> attnpool_;
};

}  // namespace

std::shared_ptr<VisionTower> make_vision_transformer(const ClipConfig& config) {
  return std::make_shared<VisionTransformer>(config);
}

std::shared_ptr<VisionTower> make_modified_resnet(const ClipConfig& config) {
  return std::make_shared<ModifiedResNet>(config);
}

}  // namespace vlmadapt::detail
