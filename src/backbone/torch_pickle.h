// A restricted reader of the pickles in PyTorch archives (torch.save's data.pkl and
// TorchScript's data.pkl). Checkpoints come from strangers, and a pickle is a program:
// Python's (and libtorch's) unpicklers call whatever globals it names, and
// torch::jit::load runs the archive's TorchScript (__setstate__). This reader executes
// nothing. It understands the binary data opcodes (protocols 1-5) and only these globals:
//   torch._utils._rebuild_tensor_v2 / _rebuild_parameter   -> a tensor view of a storage
//   torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage (persistent ids)
//   collections.OrderedDict                                -> a dict
//   torch.jit._pickle.restore_type_tag / build_*list       -> their first argument
//   __torch__.* (TorchScript classes)                      -> a plain object: BUILD stores
//                                                             its attribute dict, no method runs
// Any other global, opcode or shape of arguments is a vlmadapt::Error naming the file.
//
// Limits (each a clear error naming the file and the limit): the pickle is at most
// kMaxPickleBytes; at most kMaxMemo memo entries; nesting of containers at most
// kMaxNesting; at most kMaxTensors tensors; a tensor has at most kMaxDims dimensions.
// Every tensor's size, stride and offset is checked against its storage before the view
// is made (checked_view), so no tensor reads outside the bytes of its record.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vlmadapt::pickle {

constexpr size_t kMaxPickleBytes = size_t(64) << 20;
constexpr size_t kMaxMemo = 1u << 20;
constexpr int kMaxNesting = 64;
constexpr size_t kMaxTensors = 100000;
constexpr int64_t kMaxDims = 16;

// One unpickled value. Values live in an arena owned by Pickle and point at each other
// with plain pointers, so shared and even cyclic structures cost no recursion to free.
struct Value {
  enum class Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Object, Storage, Tensor };
  Kind kind = Kind::None;
  int64_t i = 0;          // Bool, Int
  double f = 0;           // Float
  std::string s;          // Str, Bytes; "module.name" of a Global or of an Object's class
  std::vector<Value*> items;  // Tuple, List; Dict and Object: key, value, key, value, ...
  at::Tensor tensor;      // Storage (1-D, the whole record) or Tensor (a checked view)
  int depth = 0;          // nesting below this value, bounded by kMaxNesting
};

// Returns the whole storage (a 1-D tensor of `numel` elements of `dtype`) of the record
// `key` named by a persistent id; it must check the record's size itself.
using StorageLoader = std::function<at::Tensor(const std::string& key, at::ScalarType dtype, int64_t numel)>;

class Pickle {
 public:
  // Parses `bytes`; `where` names the file (and record) in errors.
  Pickle(const std::string& bytes, const std::string& where, const StorageLoader& load);
  Pickle(const Pickle&) = delete;
  Pickle& operator=(const Pickle&) = delete;
  ~Pickle();
  const Value& root() const { return *root_; }

 private:
  std::vector<std::unique_ptr<Value>> arena_;
  Value* root_ = nullptr;
  friend class Unpickler;
};

// storage.as_strided(sizes, strides, offset) after checking, overflow-safe, that every
// element lies inside the storage; throws vlmadapt::Error naming `where` otherwise.
at::Tensor checked_view(const at::Tensor& storage, int64_t offset, const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& strides, const std::string& where);

}  // namespace vlmadapt::pickle
