#include "fused_tower.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

namespace vlmadapt::detail {
namespace {

// ---- BLAS, called directly -------------------------------------------------
// The Fortran sgemm of the BLAS that libtorch itself links (OpenBLAS on Debian), found at
// run time so that no BLAS development package is needed to build.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*, const int*);
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();

struct Blas {
  SgemmFn sgemm = nullptr;
  SetThreadsFn set_threads = nullptr;  // OpenBLAS only
  GetThreadsFn get_threads = nullptr;
};

const Blas& blas() {
  static const Blas b = [] {
    Blas out;
    out.sgemm = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
    out.set_threads = reinterpret_cast<SetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    out.get_threads = reinterpret_cast<GetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    if (!out.set_threads || !out.get_threads) out.set_threads = nullptr, out.get_threads = nullptr;
    return out;
  }();
  return b;
}

// Row-major C[m,n] (row stride ldc) = alpha A[m,k] op(B) + beta C. With `b_is_weight`, B is
// stored [n,k] (a weight [out,in]) and used transposed; otherwise it is stored [k,n].
void gemm(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
          bool b_is_weight, float beta, float* c, int64_t ldc) {
  // Row-major C = A op(B) is column-major C^T = op(B)^T A^T: the operands swap.
  const char tb = b_is_weight ? 'T' : 'N', ta = 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDB = static_cast<int>(ldb), LDA = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  blas().sgemm(&tb, &ta, &M, &N, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
}

// Set by MatrixProductsOnly on its thread, and carried by parallel_parts to the threads
// that run its parts, so that nothing else in the process is touched.
thread_local bool products_only = false;

// ---- element-wise kernels, vectorised by the compiler ----------------------
// Each has an AVX2+FMA clone and a baseline one, chosen when the library loads. The clone
// is x86-64-v3, which GCC dispatches on the CPU's features; "arch=haswell" is dispatched
// on the CPU model and so never ran on AMD processors.
#define VLMADAPT_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

// expf to about 1 ulp (Cephes' polynomial after Cody-Waite reduction), in plain
// arithmetic so that loops over it vectorise; 0 below the smallest normal result.
inline float exp_approx(float x) {
  const float in = x;
  x = std::min(std::max(x, -87.33654f), 88.72283f);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return in < -87.33654f ? 0.0f : y * scale;
}

VLMADAPT_VECTOR_CLONES
void layer_norm_rows(const float* x, int64_t rows, int64_t ldx, int64_t d, const float* w, const float* b, float eps,
                     float* y) {
  if (products_only) return;
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * ldx;
    float* yi = y + i * d;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < d; ++j) sum += xi[j];
    const float mean = sum / static_cast<float>(d);
    float sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < d; ++j) sq += (xi[j] - mean) * (xi[j] - mean);
    const float inv = 1.0f / std::sqrt(sq / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) yi[j] = (xi[j] - mean) * inv * w[j] + b[j];
  }
}

// Row-wise softmax of s [rows, cols] in place, after adding mask rows when given.
VLMADAPT_VECTOR_CLONES
void softmax_rows(float* s, int64_t rows, int64_t cols, const float* mask) {
  if (products_only) return;
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * cols;
    if (mask) {
      const float* mi = mask + i * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) si[j] += mi[j];
    }
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, si[j]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      si[j] = exp_approx(si[j] - mx);
      sum += si[j];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) si[j] *= inv;
  }
}

// h = act(h + bias) over rows of width n.
VLMADAPT_VECTOR_CLONES
void bias_quick_gelu(float* h, int64_t rows, int64_t n, const float* bias) {
  if (products_only) return;
  for (int64_t i = 0; i < rows; ++i) {
    float* hi = h + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float v = hi[j] + bias[j];
      hi[j] = v / (1.0f + exp_approx(-1.702f * v));  // v * sigmoid(1.702 v)
    }
  }
}

void bias_gelu(float* h, int64_t rows, int64_t n, const float* bias) {
  if (products_only) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float v = h[i * n + j] + bias[j];
      h[i * n + j] = 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    }
}

// Rows of c (row stride ldc) += bias.
void add_bias(float* c, int64_t rows, int64_t ldc, int64_t n, const float* bias) {
  if (products_only) return;
  for (int64_t i = 0; i < rows; ++i)
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] += bias[j];
}

// ---- one block on one group of sequences -----------------------------------

// Rows (tokens) per group. BLAS packs a weight once per product, so products need many
// rows to amortise it: measured on ViT-B/16, 400 rows ran at 84% of the large-product
// FLOP rate and 1,600 at 91-97%; the scratch is then about 9 x 1,600 x width floats.
constexpr int64_t kGroupRows = 1600;

struct Scratch {
  std::vector<float> y, qkv, attn, hidden, scores;
};

Scratch& scratch() {
  thread_local Scratch s;  // reused from call to call: no allocation in the hot loop
  return s;
}

float* sized(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// y = ln_1(x) and the packed q, k, v rows [rows, 3d] of `rows` rows of x.
void project_qkv(const FusedTower& t, const FusedBlock& w, const float* x, int64_t rows, float* y, float* qkv) {
  const int64_t d = t.width;
  layer_norm_rows(x, rows, d, d, w.ln_1_w, w.ln_1_b, t.eps, y);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(qkv + r * 3 * d, w.in_b, sizeof(float) * 3 * d);
  gemm(rows, 3 * d, d, 1.0f, y, d, w.in_w, d, true, 1.0f, qkv, 3 * d);
}

// The rest of a block once attention is done: x += out_proj(attn); x += mlp(ln_2(x)), over
// n rows of x (row stride ldx) and attn (row stride lda).
void finish_rows(const FusedTower& t, const FusedBlock& w, float* x, int64_t n, int64_t ldx, const float* attn,
                 int64_t lda) {
  const int64_t d = t.width;
  Scratch& s = scratch();
  float* y = sized(s.y, n * d);
  float* hidden = sized(s.hidden, n * 4 * d);
  add_bias(x, n, ldx, d, w.out_b);
  gemm(n, d, d, 1.0f, attn, lda, w.out_w, d, true, 1.0f, x, ldx);
  layer_norm_rows(x, n, ldx, d, w.ln_2_w, w.ln_2_b, t.eps, y);
  gemm(n, 4 * d, d, 1.0f, y, d, w.fc_w, d, true, 0.0f, hidden, 4 * d);
  (t.quick_gelu ? bias_quick_gelu : bias_gelu)(hidden, n, 4 * d, w.fc_b);
  add_bias(x, n, ldx, d, w.proj_b);
  gemm(n, d, 4 * d, 1.0f, hidden, 4 * d, w.proj_w, 4 * d, true, 1.0f, x, ldx);
}

// Attention for token 0 alone of each sequence, from y = ln_1(x) [count, l, d], into row 0
// of each sequence in attn. Only one query per sequence, so the keys and values are never
// formed: q·(W_k y_j + b_k) = (W_kᵀ q)·y_j + q·b_k, whose last term is the same for every
// j and cancels in the softmax; and Σ_j p_j (W_v y_j + b_v) = W_v (Σ_j p_j y_j) + b_v as
// the p_j sum to 1. Per head that is two products with y instead of projecting every row.
void first_token_attention(const FusedTower& t, const FusedBlock& w, const float* y, int64_t count, int64_t l,
                           const float* mask, float* attn) {
  const int64_t d = t.width, hd = d / t.heads, H = t.heads;
  Scratch& s = scratch();
  float* q = sized(s.qkv, d + 2 * H * d);
  float* u = q + d;      // [H, d]: scale W_k,hᵀ q_h per head
  float* z = u + H * d;  // [H, d]: Σ_j p_hj y_j per head
  float* p = sized(s.scores, H * l);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t i = 0; i < count; ++i) {
    const float* yi = y + i * l * d;
    float* out = attn + i * l * d;
    std::memcpy(q, w.in_b, sizeof(float) * d);
    gemm(1, d, d, 1.0f, yi, d, w.in_w, d, true, 1.0f, q, d);
    for (int64_t h = 0; h < H; ++h)
      gemm(1, d, hd, scale, q + h * hd, hd, w.in_w + (d + h * hd) * d, d, false, 0.0f, u + h * d, d);
    gemm(H, l, d, 1.0f, u, d, yi, d, true, 0.0f, p, l);
    for (int64_t h = 0; h < H; ++h) softmax_rows(p + h * l, 1, l, mask);
    gemm(H, d, l, 1.0f, p, l, yi, d, false, 0.0f, z, d);
    std::memcpy(out, w.in_b + 2 * d, sizeof(float) * d);
    for (int64_t h = 0; h < H; ++h)
      gemm(1, hd, d, 1.0f, z + h * d, d, w.in_w + (2 * d + h * hd) * d, d, true, 1.0f, out + h * hd, d);
  }
}

// x: `count` sequences of length l, [count, l, d], updated in place.
void block_forward(const FusedTower& t, const FusedBlock& w, float* x, int64_t count, int64_t l, const float* mask,
                   bool first_token_only) {
  const int64_t d = t.width, hd = d / t.heads, rows = count * l;
  Scratch& s = scratch();
  float* y = sized(s.y, rows * d);
  float* attn = sized(s.attn, rows * d);
  if (first_token_only) {
    // Only row 0 of each sequence goes on: a stride of l rows.
    layer_norm_rows(x, rows, d, d, w.ln_1_w, w.ln_1_b, t.eps, y);
    first_token_attention(t, w, y, count, l, mask, attn);
    return finish_rows(t, w, x, count, l * d, attn, l * d);
  }
  float* qkv = sized(s.qkv, rows * 3 * d);
  float* scores = sized(s.scores, l * l);
  project_qkv(t, w, x, rows, y, qkv);
  // Attention per sequence and head, reading q, k, v in place from the packed rows.
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t i = 0; i < count; ++i)
    for (int64_t h = 0; h < t.heads; ++h) {
      const float* q = qkv + i * l * 3 * d + h * hd;
      gemm(l, l, hd, scale, q, 3 * d, q + d, 3 * d, true, 0.0f, scores, l);
      softmax_rows(scores, l, l, mask);
      gemm(l, hd, l, 1.0f, scores, l, q + 2 * d, 3 * d, false, 0.0f, attn + i * l * d + h * hd, d);
    }
  finish_rows(t, w, x, rows, d, attn, d);
}

// One query row q [hd] against the prefix's p keys, then `own` keys of its sequence (the
// values follow each key at +d in the packed q, k, v rows of stride ld), into out [hd].
// The text prompts' suffixes are a few rows each: plain loops, where a BLAS call per head
// and prompt would cost more in overhead than the arithmetic.
VLMADAPT_VECTOR_CLONES
void attend_row(const float* q, const float* k_prefix, int64_t p, const float* k_own, int64_t own, int64_t ld,
                int64_t hd, float scale, float* scores, float* out) {
  const int64_t d = ld / 3, n = p + own;
  for (int64_t c = 0; c < n; ++c) {
    const float* k = c < p ? k_prefix + c * ld : k_own + (c - p) * ld;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t e = 0; e < hd; ++e) dot += q[e] * k[e];
    scores[c] = dot * scale;
  }
  softmax_rows(scores, 1, n, nullptr);
  std::fill(out, out + hd, 0.0f);
  for (int64_t c = 0; c < n; ++c) {
    const float* v = (c < p ? k_prefix + c * ld : k_own + (c - p) * ld) + d;
    const float pc = scores[c];
#pragma omp simd
    for (int64_t e = 0; e < hd; ++e) out[e] += pc * v[e];
  }
}

// Causal sequences after a shared prefix whose q, k, v rows are qkv_p [p, 3d]: `n` packed
// sequences of lengths len[0..n) in x, updated in place. With `last`, only each sequence's
// final row is finished, written to out [n, d].
void suffix_block(const FusedTower& t, const FusedBlock& w, const float* qkv_p, int64_t p, float* x,
                  const int64_t* len, int64_t n, bool last, float* out) {
  const int64_t d = t.width, hd = d / t.heads;
  int64_t rows = 0, longest = 0;
  for (int64_t i = 0; i < n; ++i) rows += len[i], longest = std::max(longest, len[i]);
  Scratch& s = scratch();
  float* y = sized(s.y, rows * d);
  float* qkv = sized(s.qkv, rows * 3 * d);
  float* attn = sized(s.attn, rows * d);
  float* scores = sized(s.scores, p + longest);
  project_qkv(t, w, x, rows, y, qkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t i = 0, row = 0; i < n; row += len[i], ++i) {
    const float* own = qkv + row * 3 * d;  // this sequence's q, k, v rows
    float* a = last ? attn + i * d : attn + row * d;
    for (int64_t j = last ? len[i] - 1 : 0; j < len[i]; ++j, a += last ? 0 : d)
      for (int64_t h = 0; h < t.heads; ++h)
        attend_row(own + j * 3 * d + h * hd, qkv_p + d + h * hd, p, own + d + h * hd, j + 1, 3 * d, hd, scale, scores,
                   a + h * hd);
  }
  if (!last) return finish_rows(t, w, x, rows, d, attn, d);
  for (int64_t i = 0, row = 0; i < n; row += len[i], ++i)
    std::memcpy(out + i * d, x + (row + len[i] - 1) * d, sizeof(float) * d);
  finish_rows(t, w, out, n, d, attn, d);
}

}  // namespace

bool fused_available() { return blas().sgemm != nullptr; }

SingleThreadedBlas::SingleThreadedBlas() : saved_(blas().get_threads ? blas().get_threads() : 0) {
  if (saved_ > 1) blas().set_threads(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (saved_ > 1) blas().set_threads(saved_);
}

MatrixProductsOnly::MatrixProductsOnly() : saved_(products_only) { products_only = true; }

MatrixProductsOnly::~MatrixProductsOnly() { products_only = saved_; }

void parallel_parts(int64_t n, const std::function<void(int64_t)>& fn) {
  SingleThreadedBlas single;
  const bool caller_products_only = products_only;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::optional<MatrixProductsOnly> as_caller;
    if (caller_products_only) as_caller.emplace();
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

void fused_forward(const FusedTower& t, float* x, int64_t n, int64_t l, const float* mask, bool first_token_only) {
  if (n == 0 || t.blocks.empty()) return;
  SingleThreadedBlas single;
  // Groups of whole sequences, and at least one group per thread.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t per_group = std::max<int64_t>(1, kGroupRows / l);
  per_group = std::min(per_group, (n + threads - 1) / threads);
  const int64_t groups = (n + per_group - 1) / per_group, stride = l * t.width;
  for (size_t b = 0; b < t.blocks.size(); ++b) {
    const bool last = b + 1 == t.blocks.size();
    parallel_parts(groups, [&](int64_t g) {
      const int64_t first = g * per_group, count = std::min(per_group, n - first);
      block_forward(t, t.blocks[b], x + first * stride, count, l, mask, first_token_only && last);
    });
  }
}

void fused_forward_prefixed(const FusedTower& t, float* prefix, int64_t p, float* rows,
                            const std::vector<int64_t>& lengths, float* out) {
  const int64_t n = static_cast<int64_t>(lengths.size()), d = t.width;
  if (n == 0 || t.blocks.empty()) return;
  SingleThreadedBlas single;
  // Groups of whole sequences of about equal rows, at least one per thread.
  int64_t total = 0;
  for (auto l : lengths) total += l;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t target = std::min(kGroupRows, (total + threads - 1) / threads);
  std::vector<int64_t> first_seq{0}, first_row{0};
  for (int64_t i = 0, group_rows = 0; i < n; ++i) {
    group_rows += lengths[i];
    if (group_rows >= target || i + 1 == n) {
      first_seq.push_back(i + 1);
      first_row.push_back(first_row.back() + group_rows);
      group_rows = 0;
    }
  }
  const int64_t hd = d / t.heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> y_p(p * d), qkv_p(p * 3 * d), attn_p(p * d), scores(p);
  for (size_t b = 0; b < t.blocks.size(); ++b) {
    const FusedBlock& w = t.blocks[b];
    const bool last = b + 1 == t.blocks.size();
    // The prefix's q, k, v at this block, which every suffix row attends to.
    project_qkv(t, w, prefix, p, y_p.data(), qkv_p.data());
    parallel_parts(static_cast<int64_t>(first_seq.size()) - 1, [&](int64_t g) {
      suffix_block(t, w, qkv_p.data(), p, rows + first_row[g] * d, lengths.data() + first_seq[g],
                   first_seq[g + 1] - first_seq[g], last, out + first_seq[g] * d);
    });
    if (last) break;
    // The prefix itself goes on: row j attends causally to prefix rows 0..j.
    for (int64_t j = 0; j < p; ++j)
      for (int64_t h = 0; h < t.heads; ++h)
        attend_row(qkv_p.data() + j * 3 * d + h * hd, qkv_p.data() + d + h * hd, j + 1, nullptr, 0, 3 * d, hd, scale,
                   scores.data(), attn_p.data() + j * d + h * hd);
    finish_rows(t, w, prefix, p, d, attn_p.data(), d);
  }
}

}  // namespace vlmadapt::detail
