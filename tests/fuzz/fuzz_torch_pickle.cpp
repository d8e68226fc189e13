// The restricted unpickler (src/backbone/torch_pickle.cpp) on arbitrary bytes, as it reads
// data.pkl of torch.save and TorchScript archives. Inside an archive every record passes a
// CRC-32 check first, which random mutations almost never pass; here the pickle is the
// input and storages come from a stand-in for the archive's records.
#include "backbone/torch_pickle.h"

#include <ATen/ATen.h>

#include <unordered_set>

#include "fuzz_util.h"

using namespace vlmadapt;
using pickle::Value;

namespace {

// As Archive::storage: a record of exactly numel elements, here any size up to 4096
// elements (a small archive's worth), so that tensor views of every shape are tried.
at::Tensor stand_in_record(const std::string& /*key*/, at::ScalarType dtype, int64_t numel) {
  if (numel < 0 || numel > 4096) throw Error("fuzz: no record of " + std::to_string(numel) + " elements");
  return at::zeros({numel}, at::TensorOptions().dtype(dtype));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_only_errors([&] {
    const pickle::Pickle pkl(fuzz::bytes(data, size), "fuzz.pkl", stand_in_record);
    // Every value the pickle made (containers may share and cycle): tensors fit their storage.
    std::vector<const Value*> todo{&pkl.root()};
    std::unordered_set<const Value*> seen;
    while (!todo.empty()) {
      const Value* v = todo.back();
      todo.pop_back();
      if (!seen.insert(v).second) continue;
      if (v->kind == Value::Kind::Tensor)
        fuzz::require(fuzz::inside_storage(v->tensor), "every tensor lies inside its storage");
      fuzz::require(v->depth <= pickle::kMaxNesting, "nesting stays within the limit");
      todo.insert(todo.end(), v->items.begin(), v->items.end());
    }
  });
  return 0;
}
