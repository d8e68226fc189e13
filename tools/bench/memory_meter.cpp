#include "bench/memory_meter.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <vlmadapt/core/error.h>

namespace vlmadapt {
namespace {

// The sizes of the blocks the counting allocator handed out, and their running total.
std::mutex g_mutex;
std::unordered_map<void*, size_t> g_sizes;
int64_t g_current = 0, g_peak = 0;

void counted_free(void* data) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_sizes.find(data);
    if (it != g_sizes.end()) {
      g_current -= static_cast<int64_t>(it->second);
      g_sizes.erase(it);
    }
  }
  c10::free_cpu(data);
}

// libtorch's default CPU allocation (c10::alloc_cpu, aligned), counted. Data and context
// are the same pointer, so the raw interface works as with the default allocator.
struct CountingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) const override {
    void* data = c10::alloc_cpu(n);
    if (data) {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_sizes[data] = n;
      g_current += static_cast<int64_t>(n);
      g_peak = std::max(g_peak, g_current);
    }
    return {data, data, &counted_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counted_free; }
};
CountingAllocator g_allocator;

}  // namespace

MemoryMeter::MemoryMeter() : previous_(c10::GetCPUAllocator()) {
  c10::SetCPUAllocator(&g_allocator);
  if (c10::GetCPUAllocator() != &g_allocator)
    throw Error("memory meter: libtorch kept another CPU allocator (of a higher priority)");
  start();
}

MemoryMeter::~MemoryMeter() { c10::SetCPUAllocator(static_cast<c10::Allocator*>(previous_)); }

void MemoryMeter::start() {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_peak = g_current;
    start_tensor_bytes_ = g_current;
  }
}

int64_t MemoryMeter::peak_tensor_bytes() const {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_peak;
}
int64_t MemoryMeter::tensor_bytes() const {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_current;
}
int64_t MemoryMeter::peak_tensor_bytes_above_start() const { return peak_tensor_bytes() - start_tensor_bytes_; }

}  // namespace vlmadapt
