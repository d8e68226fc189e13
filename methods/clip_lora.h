// clip_lora: low-rank updates of the attention projections of both towers (Zanella & Ben
// Ayed, CVPRW 2024; MaxZanella/CLIP-LoRA lora.py, loralib/). For each chosen weight W of
// each chosen block, W' = W + (alpha / sqrt(r)) * B * A with A [r, d_in] Kaiming-uniform
// (a = sqrt(5)) and B [d_out, r] zeros, so training starts exactly at zero-shot CLIP
// (specs/PROMPT_LEARNERS.md §8). The updates are weight modifiers of the one shared CLIP
// (TowerHooks): no tower is copied and the frozen weights are never written; the saved
// state holds only the A and B factors. Defaults are the paper's fixed ones: r = 2,
// alpha = 1, q, k and v of every block of both towers, one template "a photo of a {}.";
// the recipe has AdamW 2e-4, weight decay 1e-2, batch 32, crops of scale 0.08-1.
// The LoRA branch's input dropout (p = 0.25) is the code's: in a training pass (autograd
// on) each factor pair is a branch beside its linear map, s * B(A(dropout(x))), with a
// dropout of its own (the code's LinearLoRA per q, k, v); without autograd (evaluation)
// the updates are merged into the weights, as the code's eval path. Where this differs
// from the code: the schedule is the shared loop's per-epoch cosine rather than per-iteration over 500·K
// iterations (the recipe's epochs give about 500·K iterations for its dataset); fp32
// instead of fp16 autocast; the logit scale is the model's (100 for OpenAI's weights, as
// the code's fixed 100).
#pragma once
#include <algorithm>
#include <cmath>

#include <vlmadapt/core/error.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/adapt/prompts.h>

namespace vlmadapt::methods {

enum class LoraEncoder { Both, Vision, Text };
inline const std::vector<std::pair<LoraEncoder, std::string>>& enum_names(LoraEncoder) {
  static const std::vector<std::pair<LoraEncoder, std::string>> n{
      {LoraEncoder::Both, "both"}, {LoraEncoder::Vision, "vision"}, {LoraEncoder::Text, "text"}};
  return n;
}
enum class LoraPosition { All, Bottom, Mid, Up, HalfUp, HalfBottom, Top3 };
inline const std::vector<std::pair<LoraPosition, std::string>>& enum_names(LoraPosition) {
  static const std::vector<std::pair<LoraPosition, std::string>> n{
      {LoraPosition::All, "all"},         {LoraPosition::Bottom, "bottom"},
      {LoraPosition::Mid, "mid"},         {LoraPosition::Up, "up"},
      {LoraPosition::HalfUp, "half-up"},  {LoraPosition::HalfBottom, "half-bottom"},
      {LoraPosition::Top3, "top3"}};
  return n;
}

struct ClipLoraOptions {
  int64_t rank = 2;
  double alpha = 1;
  LoraEncoder encoder = LoraEncoder::Both;
  LoraPosition position = LoraPosition::All;
  std::vector<std::string> params{"q", "k", "v"};
  double dropout = 0.25;
  std::string templ = "a photo of a {}.";
  void bind(OptionSet& s) {
    s.add("rank", rank, "rank r of each update B*A").at_least(1);
    s.add("alpha", alpha, "scale alpha; the update is (alpha / sqrt(r)) * B * A").above(0);
    s.add("encoder", encoder, "which towers are adapted");
    s.add("position", position,
          "which blocks: all, bottom / mid / up (thirds), half-up, half-bottom, top3 (the last 3)");
    s.add("dropout", dropout, "dropout on the input of each B*A branch while training (0: none)").range(0, 1);
    s.add("params", params, "which attention matrices, '|'-separated from q, k, v, o (the output projection)");
    s.add("template", templ, "the one prompt of the class features");
  }
};

class ClipLora : public Method {
 public:
  explicit ClipLora(const ClipLoraOptions& options) : options_(options) {}

  Contract contract() const override { return {Input::Pixels, /*fits=*/false, /*trains=*/true}; }

  void setup(const TaskContext& task) override {
    clip_ = task.clip;
    if (updates_.empty()) build();
    tokens_ = task.tokenizer.tokenize(class_prompts(options_.templ, task.classnames), clip_->config().context_length, true).to(clip_->logit_scale().device());
    cached_text_ = torch::Tensor();
  }

  torch::Tensor logits(const Batch& batch) override {
    HooksScope scope(*clip_, hooks());
    return cosine_logits(clip_, clip_->encode_image(batch.pixels), text_features());
  }

  // The current factors as hooks of the towers: in a training pass with dropout, a branch
  // s * B(A(dropout(x))) beside each adapted map; otherwise the weight modifier
  // W + s * B * A (the same map without dropout, merged).
  TowerHooks hooks() const {
    TowerHooks h;
    const double scale = options_.alpha / std::sqrt(static_cast<double>(options_.rank));
    const bool branches = options_.dropout > 0 && torch::GradMode::is_enabled();
    // The pair is named, not bound: a lambda cannot capture a structured binding in C++17
    // (clang 14, which builds the fuzzers, refuses it).
    for (const auto& entry : updates_) {
      if (branches) {
        h.branches[entry.first] = [parts = entry.second, scale, p = options_.dropout](const torch::Tensor& x) {
          auto branch = [&](const Part& part) {
            return torch::linear(torch::linear(torch::dropout(x, p, /*train=*/true), part.a), part.b) * scale;
          };
          if (parts.size() == 1 && parts[0].row < 0) return branch(parts[0]);
          std::vector<torch::Tensor> qkv(3);  // in_proj's output columns; zeros where not adapted
          for (const auto& part : parts) qkv[static_cast<size_t>(part.row)] = branch(part);
          auto shape = x.sizes().vec();
          shape.back() = parts[0].b.size(0);
          for (auto& t : qkv)
            if (!t.defined()) t = torch::zeros(shape, x.options());
          return torch::cat(qkv, -1);
        };
        continue;
      }
      h.modifiers[entry.first] = [parts = entry.second, scale](const torch::Tensor& w) {
        if (parts.size() == 1 && parts[0].row < 0) return w + scale * parts[0].b.mm(parts[0].a);
        const int64_t d = w.size(0) / 3;  // in_proj_weight: q, k, v rows
        std::vector<torch::Tensor> rows{w.narrow(0, 0, d), w.narrow(0, d, d), w.narrow(0, 2 * d, d)};
        for (const auto& p : parts) rows[p.row] = rows[p.row] + scale * p.b.mm(p.a);
        return torch::cat(rows, 0);
      };
    }
    return h;
  }

  // Block indices of a tower with `layers` blocks for a position (ViT-B/16's 12: bottom 0-3,
  // mid 4-7, up 8-11, half-up 6-11, half-bottom 0-5, top3 9-11).
  static std::vector<int64_t> blocks(LoraPosition position, int64_t layers) {
    int64_t from = 0, to = layers;
    switch (position) {
      case LoraPosition::All: break;
      case LoraPosition::Bottom: to = layers / 3; break;
      case LoraPosition::Mid: from = layers / 3, to = 2 * layers / 3; break;
      case LoraPosition::Up: from = 2 * layers / 3; break;
      case LoraPosition::HalfUp: from = layers / 2; break;
      case LoraPosition::HalfBottom: to = layers / 2; break;
      case LoraPosition::Top3: from = std::max<int64_t>(0, layers - 3); break;
    }
    std::vector<int64_t> out;
    for (int64_t i = from; i < to; ++i) out.push_back(i);
    return out;
  }

 private:
  // Normalised class features through the adapted text tower; without autograd cached
  // until a factor changes (evaluation batches share them). Called inside the hooks' scope.
  torch::Tensor text_features() {
    const bool frozen = !torch::GradMode::is_enabled();
    if (frozen && cached_text_.defined() && cached_version_ == parameters_version(*this)) return cached_text_;
    auto text = clip_->encode_text(tokens_);
    text = text / text.norm(2, -1, true);
    if (frozen) cached_text_ = text, cached_version_ = parameters_version(*this);
    return text;
  }

  struct Part {
    int64_t row;  // 0, 1, 2 for q, k, v of in_proj_weight; -1 for a whole matrix
    torch::Tensor a, b;
  };

  void build() {
    const auto& c = clip_->config();
    if (options_.params.empty()) throw Error("clip_lora.params: expected some of q, k, v, o");
    for (const auto& p : options_.params)
      if (p != "q" && p != "k" && p != "v" && p != "o")
        throw Error("clip_lora.params: unknown matrix '" + p + "' (expected q, k, v or o)");
    const bool text = options_.encoder != LoraEncoder::Vision, vision = options_.encoder != LoraEncoder::Text;
    if (vision && !c.vision_vit)
      throw Error("clip_lora.encoder: the image tower is a ModifiedResNet, which has no attention blocks to adapt "
                  "(set clip_lora.encoder = text)");
    if (text) add_tower("transformer.resblocks.", "text", c.transformer_layers, c.transformer_width);
    if (vision) add_tower("visual.transformer.resblocks.", "visual", c.vision_layers.at(0), c.vision_width);
  }

  void add_tower(const std::string& prefix, const std::string& tag, int64_t layers, int64_t width) {
    const auto device = clip_->logit_scale().device();
    if (blocks(options_.position, layers).empty())
      throw Error("clip_lora.position: '" + to_string(options_.position) + "' selects no block of the " +
                  std::to_string(layers) + "-block " + tag + " tower");
    for (int64_t i : blocks(options_.position, layers))
      for (const auto& p : options_.params) {
        const std::string name = tag + "_" + std::to_string(i) + "_" + p;
        auto a = torch::empty({options_.rank, width}, torch::TensorOptions().device(device));
        torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
        Part part{p == "q" ? 0 : p == "k" ? 1 : p == "v" ? 2 : -1,
                  register_parameter("lora_A_" + name, a),
                  register_parameter("lora_B_" + name, torch::zeros({width, options_.rank}, a.options()))};
        const std::string weight = prefix + std::to_string(i) + (p == "o" ? ".attn.out_proj.weight" : ".attn.in_proj_weight");
        updates_[weight].push_back(part);
      }
  }

  ClipLoraOptions options_;
  Clip clip_{nullptr};
  std::map<std::string, std::vector<Part>> updates_;  // by the adapted weight's name
  torch::Tensor tokens_;
  torch::Tensor cached_text_;  // text_features() without autograd
  int64_t cached_version_ = -1;
};

VLMADAPT_REGISTER_METHOD(ClipLora, ClipLoraOptions, "clip_lora",
                         "CLIP-LoRA: low-rank updates of the attention in both towers")

}  // namespace vlmadapt::methods
