// The safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace vlmadapt {

using TensorMap = std::map<std::string, at::Tensor>;

// Reads every tensor (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL) as a CPU tensor of
// its stored dtype. Throws vlmadapt::Error naming the file (and key) when the file is
// missing, truncated, or its header is inconsistent.
TensorMap read_safetensors(const std::string& path);
// The "__metadata__" strings of the header (empty if none).
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);
// Writes through a temporary file and a rename, so a crash never leaves half a file.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace vlmadapt
