// Peak memory of one piece of work (a training step), measured two ways:
//  - tensor bytes: an allocator wrapped around libtorch's CPU allocator for the meter's
//    lifetime counts the bytes of every CPU tensor alive, over all threads, and the peak
//    since start(). Exact and independent of what malloc keeps; it misses memory that is
//    not a tensor (the fused inference pass's per-thread scratch, at most about
//    9 x 1,600 x width floats per thread, reused from call to call);
//  - resident memory: the process's peak RSS (VmHWM) after resetting it at start() through
//    /proc/self/clear_refs, less the RSS at start(). Everything, malloc's caching included.
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
  // Peak resident bytes above the resident bytes at start() (0 where /proc is missing).
  int64_t peak_rss_bytes_above_start() const;

 private:
  void* previous_;  // c10::Allocator*
  int64_t start_tensor_bytes_ = 0, start_rss_bytes_ = 0;
};

}  // namespace vlmadapt
