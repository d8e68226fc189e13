// The IDX readers of Fashion-MNIST (src/data/dataset_fashion_mnist.cpp) on arbitrary bytes.
// The first byte picks the file (bit 0: labels or images), whether the rest is gzip'ed as
// the real files are (bit 1; most mutations then fail the gzip CRC, so raw IDX comes too),
// and for images whether the label count agrees with the header (bit 2).
#include "core/resources.h"
#include "data/dataset_readers.h"
#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string payload = fuzz::bytes(data + 1, size - 1);
  fuzz::expect_only_errors([&] {
    const std::string idx = mode & 2 ? resources::gunzip(payload, "fuzz-idx.gz") : payload;
    if (mode & 1) {
      const auto labels = vlmadapt::detail::parse_idx_labels(idx, "fuzz-labels-idx1-ubyte");
      fuzz::require(labels.size() + 8 == idx.size(), "one label per byte after the header");
    } else {
      const size_t count = idx.size() >= 8 ? (uint32_t(uint8_t(idx[4])) << 24 | uint32_t(uint8_t(idx[5])) << 16 |
                                              uint32_t(uint8_t(idx[6])) << 8 | uint32_t(uint8_t(idx[7])))
                                           : 0;
      const auto images = vlmadapt::detail::parse_idx_images(idx, "fuzz-images-idx3-ubyte", mode & 4 ? count : count + 1);
      // The last image, read as Store::load reads any: inside the bytes (ASan checks the copy).
      const size_t pixels = size_t(images.rows) * images.cols;
      if (images.count > 0) {
        std::string last(pixels, '\0');
        std::copy_n(images.bytes.data() + 16 + (images.count - 1) * pixels, pixels, last.begin());
      }
    }
  });
  return 0;
}
