// The frozen transformer's forward pass without autograd, for inference (image features
// of the frozen tower, zero-shot text features, test-time views). Internal.
//
// Why: on a CPU the straightforward pass is one large tensor per operation for the whole
// batch: scores [N,H,L,L], hidden [N,L,4D], and the copies between layouts. Every
// element-wise step then streams tens of megabytes through memory, attention's small
// matrix products go to BLAS one head at a time with its own threads, and those threads
// spin against ATen's OpenMP threads on the same cores. Here each thread carries a group
// of whole sequences through every block with BLAS single-threaded: activations stay in
// cache, q, k and v are read in place from the packed projection (leading dimensions, no
// copies), layer norm, softmax and the activation run fused on rows that were just
// written, and nothing synchronises between blocks.
//
// It is the same algebra as clip_layers.cpp in fp32 (the attention scale enters as the
// product's alpha; QuickGELU is x / (1 + exp(-1.702 x)); a last block read only at token 0
// never forms keys and values, see first_token_attention); test_clip and test_exact check
// both paths against each other and the goldens.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace vlmadapt::detail {

// One residual block's fp32 weights, contiguous, in OpenAI's layout ([out, in] matrices).
struct FusedBlock {
  const float *ln_1_w, *ln_1_b, *in_w, *in_b, *out_w, *out_b;
  const float *ln_2_w, *ln_2_b, *fc_w, *fc_b, *proj_w, *proj_b;
};

struct FusedTower {
  int64_t width = 0;
  int64_t heads = 0;
  float eps = 1e-5f;
  bool quick_gelu = true;  // false: GELU with erf
  std::vector<FusedBlock> blocks;
};

// True when a BLAS sgemm can be called directly (the one libtorch links).
bool fused_available();

// While it lives, OpenBLAS runs single-threaded (other BLAS libraries are left alone): for
// regions where ATen's threads each run their own small products. Its pool would
// otherwise split each product again and spin against ATen's threads on the same cores.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_;
};

// While it lives, the fused passes that its thread starts run their matrix products
// alone: layer norm, softmax, the activation and the bias additions return at once, so
// the results are meaningless. Only for `vlmadapt bench`, which times the image tower
// this way to show how near the real pass is to the floor that the BLAS's products set
// on this machine. Other threads' passes are not affected.
class MatrixProductsOnly {
 public:
  MatrixProductsOnly();
  ~MatrixProductsOnly();
  MatrixProductsOnly(const MatrixProductsOnly&) = delete;
  MatrixProductsOnly& operator=(const MatrixProductsOnly&) = delete;

 private:
  bool saved_;
};

// fn(i) for every i in [0, n), spread over ATen's threads with OpenBLAS single-threaded.
// It lives here because at::parallel_for is a header template that runs everything in
// turn unless its caller is compiled with OpenMP, as this file is (and prompts.cpp is not).
void parallel_parts(int64_t n, const std::function<void(int64_t)>& fn);

// x [n, l, width] row-major fp32, updated in place through every block. mask: additive
// [l, l] or null. first_token_only: the last block finishes only token 0 of each
// sequence (all that a ViT's class-token pooling reads); the other rows are left stale.
void fused_forward(const FusedTower& tower, float* x, int64_t n, int64_t l, const float* mask,
                   bool first_token_only);

// Causal sequences that share their first p rows (CoOp's [SOT, ctx]): the prefix [p, width]
// runs once per block and the other rows of every sequence attend to it. rows holds those
// other rows packed, [sum of lengths, width], lengths[i] of them for sequence i. Both are
// updated in place through every block but the last, which finishes only each sequence's
// final row (its end token) into out [n, width].
void fused_forward_prefixed(const FusedTower& tower, float* prefix, int64_t p, float* rows,
                            const std::vector<int64_t>& lengths, float* out);

}  // namespace vlmadapt::detail
