// The dataset files' parsers, from bytes already in memory: the fuzz targets
// (tests/fuzz/) feed them directly, without a file per input. The datasets read their
// files through these same functions.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <vlmadapt/data/dataset.h>

namespace vlmadapt::detail {

// Size limits of the dataset files read whole (docs/RELIABILITY.md, the limits table); a
// larger file is refused, naming it and the limit, before it is read.
// A split lists every image once: ImageNet's 1.28 million training images take under 100 MB
// as "path,label" lines, and a little more as JSON. A JSON split's parsed tree takes several
// times its text, so this bounds the memory of a hostile one too.
constexpr uint64_t kMaxSplitFileBytes = uint64_t(256) << 20;  // CoOp and saved JSON splits, list files
// One class name (or FGVC image id) a line: ImageNet-21k's 21,841 names take 0.5 MB.
constexpr uint64_t kMaxLinesFileBytes = uint64_t(64) << 20;

// A CoOp split_zhou_*.json text ({"train"|"val"|"test": [[relpath, label, classname], ...]})
// into d.train, d.val, d.test and d.classnames, with the renames of CoOp dataset `dataset`
// (oxford_pets, caltech101, eurosat, ...). Throws vlmadapt::Error naming `path`.
void parse_coop_split(const std::string& text, const std::string& path, const std::string& dataset, Dataset& d);

// An IDX1 label file, decompressed: magic 0x00000801, count, then one class index (0..9)
// per item. Throws vlmadapt::Error naming `path`.
std::vector<uint8_t> parse_idx_labels(const std::string& bytes, const std::string& path);

// An IDX3 image file, decompressed: magic 0x00000803, count, rows, cols (1..4096), then
// count * rows * cols pixels; count must be `expected_count`.
struct IdxImages {
  std::string bytes;  // the whole decompressed file; pixels start at offset 16
  uint32_t count = 0, rows = 0, cols = 0;
};
IdxImages parse_idx_images(std::string bytes, const std::string& path, size_t expected_count);

}  // namespace vlmadapt::detail
