// The safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
//
// Files come from strangers, so reading checks everything before allocating: the header
// length (at most kSafetensorsMaxHeaderBytes), the number of tensors (kSafetensorsMaxTensors)
// and of dimensions (kSafetensorsMaxDims), each shape's byte size (overflow-safe) against
// its data offsets, offsets inside the file and not overlapping. So the tensors never
// take more memory than the file's bytes. Each violation is a vlmadapt::Error naming the
// file, the tensor and the limit.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace vlmadapt {

using TensorMap = std::map<std::string, at::Tensor>;

constexpr uint64_t kSafetensorsMaxHeaderBytes = uint64_t(16) << 20;  // CLIP headers are ~100 KB
constexpr size_t kSafetensorsMaxTensors = 100000;
constexpr int64_t kSafetensorsMaxDims = 16;

// Reads every tensor (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL) as a CPU tensor of
// its stored dtype. Throws vlmadapt::Error naming the file (and key) when the file is
// missing, truncated, or its header is inconsistent.
TensorMap read_safetensors(const std::string& path);
// The same from the file's bytes in memory; `name` stands for the file in errors.
TensorMap read_safetensors_bytes(std::string bytes, const std::string& name);
// The "__metadata__" strings of the header (empty if none).
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);
std::map<std::string, std::string> read_safetensors_metadata_bytes(std::string bytes, const std::string& name);
// Writes through a temporary file and a rename, so a crash never leaves half a file.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace vlmadapt
