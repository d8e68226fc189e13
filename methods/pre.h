// pre: Prompt learning with a Reparameterization Encoder (PRE; minhanh151/PRE
// trainers/pre.py, configs/trainers/PRE/vit_b16_ep50_ctxv1.yaml). CoOp in which the context
// passes through a learnable encoder before use: prompts = [SOT, E(ctx) + ctx, class tokens,
// ".", EOT]. Learned: ctx and E; the whole CLIP is frozen. E (pre.module_type):
//   lstm1 (default, PRE.md's "PRE_LSTM1_True_False"): a bidirectional LSTM (D -> D/2 per
//         direction, 1 layer) over the sequence of the n_ctx context tokens, the two
//         directions concatenated back to D;
//   lstm2: the same with 2 layers;
//   mlp1:  Linear(D -> bottleneck 64), ReLU, Linear(64 -> D);
//   mlp2:  the same layers applied twice (the official `layers + layers` repeats the same
//          modules, so the weights are shared).
// The residual (pre.residual, on by default) adds ctx to E's output. Defaults are the
// config's: 4 context vectors from "a photo of a", class token at the end; train with
// recipes/pre/pre.ini.
//
// Where we differ from the official code:
//  - the loss is plain cross-entropy. The official non-AMP branch of forward_backward adds
//    an undefined `self.w * score` (it only runs with PREC = amp); that term is not ported;
//  - fp32 throughout (official: fp16 or amp);
//  - not ported: the `transformer` encoder (it references an undefined max_length), one
//    encoder per token (separate_network, off by default), class-specific context, and
//    lstm2's 0.05 dropout between its layers (the shared loop has no train/eval switch, so
//    it would drop at evaluation too; the official 1-layer LSTM's dropout has no effect).
#pragma once
#include <tuple>

#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/core/error.h>

namespace vlmadapt::methods {

enum class PreEncoderType { Lstm1, Lstm2, Mlp1, Mlp2 };
inline const std::vector<std::pair<PreEncoderType, std::string>>& enum_names(PreEncoderType) {
  static const std::vector<std::pair<PreEncoderType, std::string>> n{{PreEncoderType::Lstm1, "lstm1"},
                                                                     {PreEncoderType::Lstm2, "lstm2"},
                                                                     {PreEncoderType::Mlp1, "mlp1"},
                                                                     {PreEncoderType::Mlp2, "mlp2"}};
  return n;
}

struct PreOptions {
  PromptLearnerOptions prompt;
  PreEncoderType module_type = PreEncoderType::Lstm1;
  int64_t bottleneck = 64;  // mlp1, mlp2: hidden width
  bool residual = true;
  int64_t text_chunk = 0;
  PreOptions() {
    prompt.n_ctx = 4;
    prompt.ctx_init = "a photo of a";
  }
  void bind(OptionSet& s) {
    s.add("n_ctx", prompt.n_ctx, "number of learnable context vectors without ctx_init (ctx_init sets it to its word count)")
        .at_least(1);
    s.add("ctx_init", prompt.ctx_init, "initialise the context from these words; empty = random (std init_std)");
    s.add("init_std", prompt.init_std, "std of the random initialisation").at_least(0);
    s.add("class_token_position", prompt.class_token_position, "where the class name goes");
    s.add("module_type", module_type, "the encoder E of the context tokens (bidirectional LSTM of 1 or 2 layers, or MLP)");
    s.add("bottleneck", bottleneck, "hidden width of the MLP encoders").at_least(1);
    s.add("residual", residual, "add ctx to the encoder's output");
    s.add("text_chunk", text_chunk, "classes per text-tower pass (0 = all at once)").at_least(0);
  }
};

// E: ctx [n_ctx,D] -> [n_ctx,D].
class PreEncoderImpl : public torch::nn::Module {
 public:
  PreEncoderImpl(PreEncoderType type, int64_t width, int64_t bottleneck, bool residual)
      : type_(type), residual_(residual) {
    if (type == PreEncoderType::Lstm1 || type == PreEncoderType::Lstm2) {
      // Two directions of D/2 give back D only for an even width (every released CLIP's).
      if (width % 2)
        throw Error("pre.module_type: the LSTM encoders need an even text width, this model's is " + std::to_string(width));
      auto o = torch::nn::LSTMOptions(width, width / 2).bidirectional(true).batch_first(true);
      lstm_ = register_module("lstm", torch::nn::LSTM(o.num_layers(type == PreEncoderType::Lstm1 ? 1 : 2)));
    } else {
      linear1_ = register_module("linear1", torch::nn::Linear(width, bottleneck));
      linear2_ = register_module("linear2", torch::nn::Linear(bottleneck, width));
    }
  }

  torch::Tensor forward(const torch::Tensor& ctx) {
    torch::Tensor out;
    if (lstm_) {
      out = std::get<0>(lstm_->forward(ctx.unsqueeze(0))).squeeze(0);  // the n_ctx tokens as one sequence
    } else {
      out = mlp(ctx);
      if (type_ == PreEncoderType::Mlp2) out = mlp(out);
    }
    return residual_ ? out + ctx : out;
  }

 private:
  torch::Tensor mlp(const torch::Tensor& x) { return linear2_->forward(torch::relu(linear1_->forward(x))); }
  PreEncoderType type_;
  bool residual_;
  torch::nn::LSTM lstm_{nullptr};
  torch::nn::Linear linear1_{nullptr}, linear2_{nullptr};
};
TORCH_MODULE(PreEncoder);

class Pre : public Method {
 public:
  explicit Pre(const PreOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Features, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (!learner_) {
      learner_ = register_module("prompt_learner", PromptLearner(clip_, task.tokenizer, options_.prompt, 0));
      encoder_ = register_module("encoder", PreEncoder(options_.module_type, clip_->text_width(), options_.bottleneck,
                                                       options_.residual));
      encoder_->to(clip_->logit_scale().device());
    }
    learner_->chunk = options_.text_chunk;
    learner_->set_classes(task.classnames);
  }

  torch::Tensor logits(const Batch& batch) override {
    auto text = learner_->text_features(encoder_->forward(learner_->ctx()));
    return cosine_logits(clip_, batch.image_features, text / text.norm(2, -1, true));
  }

  PromptLearner& learner() { return learner_; }
  PreEncoder& encoder() { return encoder_; }

 private:
  PreOptions options_;
  Clip clip_{nullptr};
  PromptLearner learner_{nullptr};
  PreEncoder encoder_{nullptr};
};

VLMADAPT_REGISTER_METHOD(Pre, PreOptions, "pre", "PRE: CoOp's context through a learnable encoder (BiLSTM) with a residual")

}  // namespace vlmadapt::methods
