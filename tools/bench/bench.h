// vlmadapt bench: the side-by-side yardstick against the Python toolkits
// (../shared/bench/perf_py.py), on random weights of a named architecture. The coop and
// tpt tasks run the real method plugins and the trainer's step, not a copy.
//   encode  image-tower throughput (images/s), with the FLOP rate it reaches and that of
//           a large single-precision matrix product on this machine, and the throughput
//           of the tower's matrix products alone (products_only_images_per_s): the floor
//           that the BLAS sets, against which the rest of the pass costs what is left
//   coop    seconds per CoOp training step: the image tower on a batch without
//           gradients, the text tower over all class prompts (16 context vectors)
//           forward and backward, then SGD
//   tpt     seconds per test image: 64 views, 4 context vectors, 1 step, the prediction;
//           with encode_seconds (the 64 views' image tower) and the same tower's matrix
//           products alone (encode_products_only_seconds)
//   epoch   seconds per CoOp epoch on the Fashion-MNIST few-shot split (real decoding and
//           augmentation through the loader), online and from the opt-in cache of frozen
//           features over train.feature_views augmented views, and their ratio
//   tta     seconds per test image of any registered method (--method) on --views views:
//           the views' image tower, then the method's adapted prediction; a method that
//           does not adapt (zeroshot) scores every view, the cheapest use of the same
//           views and the reference for the training-free online methods. Online
//           methods run as one stream, so their memory fills over the timed images
//   fit     seconds of a training-free method's fit() (--method) on random features of
//           --n-cls classes x --shots images (x its support views), with its searches on
//           a validation split of min(shots, 4) per class; for a method that also trains,
//           one step of the shared loop on a batch of 256
//   step    one training step of any method on frozen features (--method, --batch random
//           features, --n-cls classes; --set KEY=VALUE for its options) and one CoOp step
//           (16 context vectors) in the same process: median seconds and the peak CPU
//           tensor bytes of a step above those alive before it (bench/memory_meter.h),
//           and the ratios to CoOp's
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <vlmadapt/engine/recipe.h>

namespace vlmadapt {

struct BenchOptions {
  std::string task = "encode";  // encode | coop | tpt | epoch | tta | fit | step
  std::string arch = "ViT-B/16";  // a named architecture (random weights), or "default" (the built-in model)
  int64_t n_cls = 100;
  int64_t batch = 32;
  int threads = 2;
  int reps = 3;
  int shots = 16;          // epoch: images per class
  int feature_views = 8;   // epoch: cached augmented views per image
  std::string method = "tda";  // tta, fit, step: the method
  int views = 64;          // tta: views per test image
  std::vector<std::string> sets;  // step: the method's options, "cocoop.recompute=false"
};

// Runs one benchmark and returns its JSON line: perf_py.py's fields (images_per_s,
// seconds_per_step or seconds_per_image; task, arch, n_cls, batch, threads) plus
// peak_rss_mb and, for encode, gflops, matmul_gflops and products_only_images_per_s; tpt
// adds encode_seconds and encode_products_only_seconds; epoch prints online_seconds,
// cached_seconds (one epoch each), speedup and cache_seconds (building the cache once).
nlohmann::json run_bench(const BenchOptions& options);

// The recipe of the bench's CoOp steps and epochs: CoOp's optimiser (SGD, lr 0.002,
// momentum 0.9, no weight decay), the method "coop".
Recipe coop_bench_recipe();

// Peak resident memory of this process so far, in MB (VmHWM).
double peak_rss_mb();

}  // namespace vlmadapt
