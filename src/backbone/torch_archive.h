// PyTorch zip archives (torch.save files and TorchScript archives) read as data: the
// records are read with libtorch's caffe2::serialize::PyTorchStreamReader, the pickle
// with the restricted reader of torch_pickle.h, and no TorchScript code is ever run
// (the code/ records are not even read).
//
// Checks and limits (each a vlmadapt::Error naming the file and what was expected):
//   - PyTorchStreamReader does not verify CRC-32s (libtorch builds miniz without them),
//     so every record read is checked against the central directory's CRC-32 with zlib;
//   - records must be stored uncompressed (as torch.save and torch.jit.save write them),
//     so a record never takes more memory than its bytes in the file (no zip bombs);
//   - at most kMaxRecords records;
//   - a storage record must hold exactly numel * element size bytes of its persistent id,
//     and every tensor must lie inside its storage (pickle::checked_view);
//   - plus the pickle limits of torch_pickle.h (size, memo, nesting, tensors, dimensions).
#pragma once
#include <string>

#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {

constexpr size_t kMaxArchiveRecords = 100000;

// True for a TorchScript archive (it has constants.pkl or code/), false for torch.save.
bool is_torchscript_archive(const std::string& path);
// The parameters and buffers of a TorchScript module: every tensor attribute of its
// object tree, named by its attribute path ("visual.conv1.weight").
TensorMap read_torchscript_tensors(const std::string& path);
// A torch.save'd state dict (or a dict holding one under "state_dict") of name -> tensor.
TensorMap read_torch_save_tensors(const std::string& path);
// The same from the archive's bytes in memory; `name` stands for the file in errors.
TensorMap read_torchscript_tensors_bytes(std::string bytes, const std::string& name);
TensorMap read_torch_save_tensors_bytes(std::string bytes, const std::string& name);

}  // namespace vlmadapt
