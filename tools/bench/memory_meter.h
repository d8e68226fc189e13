// Peak memory of one piece of work (a training step) as CPU tensor bytes: an allocator
// wrapped around libtorch's CPU allocator for the meter's lifetime counts the bytes of
// every CPU tensor alive, over all threads, and the peak since start(). Exact and
// independent of what malloc keeps for reuse (the peak resident memory of a repeated step
// does not move once the first has grown the heap, so it cannot tell two steps apart).
// It misses memory that is not a tensor: the fused inference pass's per-thread scratch
// (at most about 9 x 1,600 x width floats per thread, reused from call to call).
// One meter at a time; tensors allocated before it are freed normally.
#pragma once
#include <cstdint>

namespace vlmadapt {

class MemoryMeter {
 public:
  MemoryMeter();   // installs the counting CPU allocator
  ~MemoryMeter();  // puts back the allocator it found
  MemoryMeter(const MemoryMeter&) = delete;
  MemoryMeter& operator=(const MemoryMeter&) = delete;

  void start();  // the peaks restart from now
  // Peak tensor bytes above those alive at start(), and their total peak.
  int64_t peak_tensor_bytes_above_start() const;
  int64_t peak_tensor_bytes() const;
  int64_t tensor_bytes() const;  // alive now (counted since the meter was made)

 private:
  void* previous_;  // c10::Allocator*
  int64_t start_tensor_bytes_ = 0;
};

}  // namespace vlmadapt
