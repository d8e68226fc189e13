// cocoop: Conditional Context Optimization (Zhou et al., CVPR 2022; KaiyangZhou/CoOp
// trainers/cocoop.py). CoOp's context plus a light meta-net on each image:
// pi(x) = linear2(relu(linear1(f(x)))), Linear(E -> E/16) and Linear(E/16 -> D), on the
// L2-normalised image feature f(x); the same pi(x) is added to every context token, so each
// image has its own prompts [SOT, ctx + pi(x_i), class tokens, ".", EOT] and its own text
// features t_i; logits_i = exp(logit_scale) * f(x_i) . norm(t_i)^T; cross-entropy. Learned:
// ctx and the meta-net; the whole CLIP is frozen. Defaults are vit_b16_c4_ep10_batch1_ctxv1's:
// 4 context vectors from "a photo of a" (as CoOp, ctx_init sets n_ctx to its word count),
// class token at the end (the official code's only position; no class-specific context).
//
// Where we differ from the official code:
//  - fp32 throughout (official: PREC fp16, the meta-net cast to fp16 too);
//  - memory. The official code stacks the batch's prompts (B x C sequences) and keeps
//    every activation for the backward pass, about B times a CoOp step's. Here each image's
//    text pass runs on its own (its prefix [SOT, ctx_i] once, the class suffixes shared:
//    ClipImpl::encode_text_prefixed through the PromptLearner) and, with gradients, keeps
//    no activations beyond the first cocoop.kept_graphs images' (1): the backward pass
//    encodes each other image's prompts again (PromptLearner::recompute) and
//    backpropagates its slice of the gradient. A step then holds at most two images' text
//    passes at a time, about a CoOp step's memory, whatever the batch; at the official
//    batch of 1 nothing is encoded twice. Exact: the same operations, run twice; the
//    price is one more forward pass per recomputed image (about half again its time). A
//    kept_graphs of the batch size or more keeps every graph (the official memory).
#pragma once
#include <algorithm>
#include <vector>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

struct CocoopOptions {
  PromptLearnerOptions prompt;
  int64_t text_chunk = 0;  // classes per text-tower pass of an image; 0 = all
  int64_t kept_graphs = 1;  // images per step whose graphs are kept; the others are encoded again in backward
  CocoopOptions() {
    prompt.n_ctx = 4;
    prompt.ctx_init = "a photo of a";
  }
  void bind(OptionSet& s) {
    s.add("n_ctx", prompt.n_ctx, "number of learnable context vectors without ctx_init (ctx_init sets it to its word count)")
        .at_least(1);
    s.add("ctx_init", prompt.ctx_init, "initialise the context from these words; empty = random (std init_std)");
    s.add("init_std", prompt.init_std, "std of the random initialisation").at_least(0);
    s.add("text_chunk", text_chunk, "classes per text-tower pass of an image (0 = all at once)").at_least(0);
    s.add("kept_graphs", kept_graphs,
          "images per step whose text-tower activations are kept for the backward pass; the others are encoded "
          "again in the backward pass instead (exact). 0 = all again; the batch size or more = keep all, the "
          "official code's memory (the batch size times one image's)")
        .at_least(0);
  }
};

// The official meta-net, with its parameter names: linear1, relu, linear2.
inline torch::nn::Sequential cocoop_meta_net(int64_t vis_dim, int64_t ctx_dim) {
  const int64_t hidden = std::max<int64_t>(1, vis_dim / 16);  // at least one unit on tiny models
  return torch::nn::Sequential({{"linear1", torch::nn::Linear(vis_dim, hidden)},
                                {"relu", torch::nn::ReLU()},
                                {"linear2", torch::nn::Linear(hidden, ctx_dim)}});
}

class Cocoop : public Method {
 public:
  explicit Cocoop(const CocoopOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Features, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (!learner_) {
      learner_ = register_module("prompt_learner", PromptLearner(clip_, task.tokenizer, options_.prompt, 0));
      meta_net_ = register_module("meta_net", cocoop_meta_net(clip_->embed_dim(), clip_->text_width()));
      meta_net_->to(clip_->logit_scale().device());
    }
    learner_->chunk = options_.text_chunk;
    learner_->set_classes(task.classnames);
  }

  torch::Tensor logits(const Batch& batch) override {
    auto image = batch.image_features / batch.image_features.norm(2, -1, true);
    auto text = image_text_features(conditional_ctx(image));
    text = text / text.norm(2, -1, true);
    return clip_->logit_scale().exp() * torch::bmm(text, image.unsqueeze(2)).squeeze(2);
  }

  // Each image's context [B,n_ctx,D]: ctx + pi(x_i) on every token; `image` normalised [B,E].
  torch::Tensor conditional_ctx(const torch::Tensor& image) {
    return learner_->ctx().unsqueeze(0) + meta_net_->forward(image).unsqueeze(1);
  }

  // Text features [B,C,E] (not normalised) of each image's prompts, one image per pass;
  // with gradients, images from kept_graphs on keep no activations (encoded again in backward).
  torch::Tensor image_text_features(const torch::Tensor& ctx) {
    std::vector<torch::Tensor> per_image;
    for (int64_t i = 0; i < ctx.size(0); ++i) {
      learner_->recompute = i >= options_.kept_graphs;  // read as the image's pass is made
      per_image.push_back(learner_->text_features(ctx[i]));
    }
    return torch::stack(per_image);
  }

  PromptLearner& learner() { return learner_; }
  torch::nn::Sequential& meta_net() { return meta_net_; }

 private:
  CocoopOptions options_;
  Clip clip_{nullptr};
  PromptLearner learner_{nullptr};
  torch::nn::Sequential meta_net_{nullptr};
};

VLMADAPT_REGISTER_METHOD(Cocoop, CocoopOptions, "cocoop",
                         "CoCoOp: CoOp's context shifted per image by a meta-net on its image feature")

}  // namespace vlmadapt::methods
