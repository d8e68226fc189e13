#include "clip_layers.h"

#include <atomic>
#include <cmath>
#include <tuple>

#include <vlmadapt/core/error.h>

namespace vlmadapt::detail {

torch::Tensor layer_norm(torch::nn::LayerNorm& ln, const torch::Tensor& x) {
  if (x.scalar_type() == torch::kFloat) return ln->forward(x);
  return ln->forward(x.to(torch::kFloat)).to(x.scalar_type());
}

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, double eps) {
  // torch::layer_norm is what LayerNorm::forward calls: the same results as the overload above.
  if (x.scalar_type() == torch::kFloat) return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  return torch::layer_norm(x.to(torch::kFloat), {x.size(-1)}, weight, bias, eps).to(x.scalar_type());
}

static torch::nn::LayerNorm make_layer_norm(int64_t width, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(eps));
}

// x W^T + b, plus the branch beside the map when there is one.
static torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                            const LinearBranch& branch) {
  auto y = torch::linear(x, w, b);
  if (!branch) return y;
  auto extra = branch(x);
  if (!extra.defined() || extra.sizes() != y.sizes())
    throw Error("linear branch returned " + (extra.defined() ? c10::str(extra.sizes()) : std::string("an undefined tensor")) +
                ", expected the map's output shape " + c10::str(y.sizes()));
  return y + extra;
}

AttentionImpl::AttentionImpl(int64_t width, int64_t heads) : heads_(heads) {
  in_proj_weight_ = register_parameter("in_proj_weight", torch::empty({3 * width, width}));
  in_proj_bias_ = register_parameter("in_proj_bias", torch::zeros({3 * width}));
  out_proj_ = register_module("out_proj", torch::nn::Linear(width, width));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask, const BlockWeights& w) {
  const int64_t n = x.size(0), l = x.size(1), d = x.size(2), hd = d / heads_;
  // [N,L,3D] -> 3 x [N,H,L,hd]
  auto qkv = linear(x, w.in_w, w.in_b, w.in_branch).view({n, l, 3, heads_, hd});
  qkv = qkv.permute({2, 0, 3, 1, 4});
  auto q = qkv[0] * (1.0 / std::sqrt(static_cast<double>(hd)));
  auto scores = torch::matmul(q, qkv[1].transpose(-2, -1));
  if (mask.defined()) scores = scores + mask;
  auto out = torch::matmul(torch::softmax(scores, -1), qkv[2]);  // [N,H,L,hd]
  return linear(out.transpose(1, 2).reshape({n, l, d}), w.out_w, w.out_b, w.out_branch);
}

std::pair<torch::Tensor, torch::Tensor> AttentionImpl::forward_prefixed(const torch::Tensor& y_p,
                                                                        const torch::Tensor& y_s,
                                                                        const torch::Tensor& mask,
                                                                        const SuffixRows& rows,
                                                                        const torch::Tensor& out_slot,
                                                                        const BlockWeights& w) {
  const int64_t c = rows.lengths.size(0), s = rows.length, p = y_p.size(1), d = y_s.size(-1), hd = d / heads_;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto heads = [&](const torch::Tensor& qkv, int64_t n, int64_t l) {  // [n*l,3D] -> [3,n,H,l,hd]
    return qkv.view({n, l, 3, heads_, hd}).permute({2, 0, 3, 1, 4});
  };
  auto qkv_p = heads(linear(y_p, w.in_w, w.in_b, w.in_branch), 1, p);
  // The packed rows go to their padded slots for the per-suffix attention; the padding
  // (zeros, after each end token) is masked out for every real row and never read back.
  auto packed = linear(y_s, w.in_w, w.in_b, w.in_branch);
  auto padded = packed.size(0) == c * s ? packed
                                        : torch::zeros({c * s, 3 * d}, packed.options()).index_copy(0, rows.slot, packed);
  auto qkv_s = heads(padded, c, s);
  auto scores_p = torch::matmul(qkv_p[0] * scale, qkv_p[1].transpose(-2, -1)) + mask.narrow(0, 0, p).narrow(1, 0, p);
  auto out_p = torch::matmul(torch::softmax(scores_p, -1), qkv_p[2]);
  // Keys and values of the suffix rows: the prefix's (seen by all of them), then their own.
  auto k = torch::cat({qkv_p[1].expand({c, -1, -1, -1}), qkv_s[1]}, 2);
  auto v = torch::cat({qkv_p[2].expand({c, -1, -1, -1}), qkv_s[2]}, 2);
  auto scores_s = torch::matmul(qkv_s[0] * scale, k.transpose(-2, -1)) + mask.narrow(0, p, s);
  auto out_s = torch::matmul(torch::softmax(scores_s, -1), v).transpose(1, 2).reshape({c * s, d});
  if (out_slot.size(0) != c * s) out_s = out_s.index_select(0, out_slot);
  return {linear(out_p.transpose(1, 2).reshape({1, p, d}), w.out_w, w.out_b, w.out_branch),
          linear(out_s, w.out_w, w.out_b, w.out_branch)};
}

MlpImpl::MlpImpl(int64_t width, Activation activation) : activation_(activation) {
  c_fc_ = register_module("c_fc", torch::nn::Linear(width, 4 * width));
  c_proj_ = register_module("c_proj", torch::nn::Linear(4 * width, width));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x, const BlockWeights& w) {
  auto h = linear(x, w.fc_w, w.fc_b, w.fc_branch);
  h = activation_ == Activation::QuickGELU ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return linear(h, w.proj_w, w.proj_b, w.proj_branch);
}

ResidualAttentionBlockImpl::ResidualAttentionBlockImpl(int64_t width, int64_t heads,
                                                       const ClipConfig& config) {
  attn_ = register_module("attn", Attention(width, heads));
  ln_1_ = register_module("ln_1", make_layer_norm(width, config.layer_norm_eps));
  mlp_ = register_module("mlp", Mlp(width, config.activation));
  ln_2_ = register_module("ln_2", make_layer_norm(width, config.layer_norm_eps));
}

torch::Tensor ResidualAttentionBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& mask,
                                                  const BlockWeights& w) {
  auto y = x + attn_->forward(layer_norm(x, w.ln_1_w, w.ln_1_b, w.eps), mask, w);
  return y + mlp_->forward(layer_norm(y, w.ln_2_w, w.ln_2_b, w.eps), w);
}

std::pair<torch::Tensor, torch::Tensor> ResidualAttentionBlockImpl::forward_prefixed(const torch::Tensor& x_p,
                                                                                     const torch::Tensor& x_s,
                                                                                     const torch::Tensor& mask,
                                                                                     const SuffixRows& rows,
                                                                                     const torch::Tensor& keep,
                                                                                     const BlockWeights& w) {
  const auto out_slot = keep.defined() ? rows.slot.index_select(0, keep) : rows.slot;
  auto ln_1 = [&](const torch::Tensor& x) { return layer_norm(x, w.ln_1_w, w.ln_1_b, w.eps); };
  auto ln_2 = [&](const torch::Tensor& x) { return layer_norm(x, w.ln_2_w, w.ln_2_b, w.eps); };
  auto [a_p, a_s] = attn_->forward_prefixed(ln_1(x_p), ln_1(x_s), mask, rows, out_slot, w);
  auto y_s = (keep.defined() ? x_s.index_select(0, keep) : x_s) + a_s;
  y_s = y_s + mlp_->forward(ln_2(y_s), w);
  if (keep.defined()) return {torch::Tensor(), y_s};
  auto y_p = x_p + a_p;
  return {y_p + mlp_->forward(ln_2(y_p), w), y_s};
}

FusedBlock BlockWeights::fused() const {
  auto f = [](const torch::Tensor& t) { return t.data_ptr<float>(); };
  return {f(ln_1_w), f(ln_1_b), f(in_w), f(in_b), f(out_w), f(out_b),
          f(ln_2_w), f(ln_2_b), f(fc_w), f(fc_b), f(proj_w), f(proj_b)};
}

std::vector<const torch::Tensor*> BlockWeights::all() const {
  return {&ln_1_w, &ln_1_b, &in_w, &in_b, &out_w, &out_b, &ln_2_w, &ln_2_b, &fc_w, &fc_b, &proj_w, &proj_b};
}

Transformer::Transformer(int64_t width, int64_t layers, int64_t heads, const ClipConfig& config) {
  auto list = register_module("resblocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    blocks_.emplace_back(width, heads, config);
    list->push_back(blocks_.back());
  }
  fused_.width = width;
  fused_.heads = heads;
  fused_.eps = static_cast<float>(config.layer_norm_eps);
  fused_.quick_gelu = config.activation == Activation::QuickGELU;
}

namespace {
std::atomic<bool> fused_enabled{true};
}  // namespace

bool Transformer::can_fuse(std::initializer_list<torch::Tensor> inputs, const torch::Tensor& mask,
                           const std::vector<BlockWeights>& weights) const {
  if (!fused_enabled || !fused_available() || blocks_.empty() || hooks_.has_deep()) return false;
  if (mask.defined() && (mask.scalar_type() != torch::kFloat || !mask.device().is_cpu() || mask.dim() != 2))
    return false;
  const bool grad = torch::GradMode::is_enabled();
  for (const auto& x : inputs)
    if (!x.device().is_cpu() || x.scalar_type() != torch::kFloat || x.size(-1) != fused_.width ||
        (grad && x.requires_grad()))
      return false;
  // The block weights are every parameter of the tower (modified ones included).
  for (const auto& w : weights) {
    if (w.has_branch()) return false;
    for (const torch::Tensor* p : w.all())
      if ((grad && p->requires_grad()) || p->scalar_type() != torch::kFloat || !p->device().is_cpu() ||
          !p->is_contiguous())
        return false;
  }
  return true;
}

FusedTower Transformer::fused_tower(const std::vector<BlockWeights>& weights) const {
  FusedTower tower = fused_;  // per call: the tower may run on several threads at once
  for (const auto& w : weights) tower.blocks.push_back(w.fused());
  return tower;
}

torch::Tensor Transformer::forward(torch::Tensor x, const torch::Tensor& mask, bool first_token_only) {
  const auto weights = pass_weights();  // alive until the pass is done (fused reads pointers)
  if (x.dim() == 3 && can_fuse({x}, mask, weights)) {
    auto out = x.contiguous().clone();  // updated in place; the caller's tensor is left alone
    auto m = mask.defined() ? mask.contiguous() : mask;
    fused_forward(fused_tower(weights), out.data_ptr<float>(), out.size(0), out.size(1),
                  m.defined() ? m.data_ptr<float>() : nullptr, first_token_only);
    return out;
  }
  for (size_t b = 0; b < blocks_.size(); ++b) {
    if (b > 0) x = put_prompts(x, b);
    x = blocks_[b]->forward(x, mask, weights[b]);
  }
  return x;
}

torch::Tensor Transformer::forward_prefixed(torch::Tensor x_p, torch::Tensor x_s, const torch::Tensor& mask,
                                           const SuffixRows& rows) {
  const auto weights = pass_weights();
  if (can_fuse({x_p, x_s}, mask, weights)) {
    auto prefix = x_p.contiguous().clone(), packed = x_s.contiguous().clone();  // updated in place
    const auto lengths = rows.lengths.to(torch::kCPU).contiguous();
    std::vector<int64_t> per_suffix(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + lengths.numel());
    auto out = torch::empty({lengths.numel(), fused_.width}, x_s.options());
    fused_forward_prefixed(fused_tower(weights), prefix.data_ptr<float>(), prefix.size(1), packed.data_ptr<float>(),
                           per_suffix, out.data_ptr<float>());
    return out;
  }
  const auto ends = rows.lengths.cumsum(0) - 1;  // each suffix's last packed row
  for (size_t b = 0; b < blocks_.size(); ++b) {
    const bool last = b + 1 == blocks_.size();
    if (b > 0) x_p = put_prompts(x_p, b);  // the prompt rows lie in the shared prefix
    std::tie(x_p, x_s) = blocks_[b]->forward_prefixed(x_p, x_s, mask, rows, last ? ends : torch::Tensor(), weights[b]);
  }
  return x_s;
}

}  // namespace vlmadapt::detail

namespace vlmadapt {
void set_fused_inference(bool enabled) { detail::fused_enabled = enabled; }
bool fused_inference() { return detail::fused_enabled; }
}  // namespace vlmadapt
