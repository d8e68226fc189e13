#include <vlmadapt/core/safetensors.h>

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

namespace vlmadapt {
namespace {

struct DtypeName {
  const char* name;
  torch::Dtype dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
    {"I16", torch::kInt16},   {"I8", torch::kInt8},     {"U8", torch::kUInt8},
    {"BOOL", torch::kBool}};

torch::Dtype dtype_of(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.dtype;
  throw Error(where + ": unsupported dtype '" + name + "'");
}

std::string name_of(torch::Dtype dtype, const std::string& where) {
  for (const auto& d : kDtypes)
    if (dtype == d.dtype) return d.name;
  throw Error(where + ": cannot store dtype " + std::string(c10::toString(dtype)));
}

struct Parsed {
  std::string bytes;
  nlohmann::json header;
  size_t data_start = 0;
};

// `path` names the file (or the buffer) in errors.
Parsed parse(std::string bytes, const std::string& path) {
  Parsed p;
  p.bytes = std::move(bytes);
  if (p.bytes.size() < 8) throw Error(path + ": not a safetensors file (shorter than 8 bytes)");
  uint64_t n = 0;
  std::memcpy(&n, p.bytes.data(), 8);  // little-endian hosts only (x86-64, arm64)
  if (n == 0 || n > p.bytes.size() - 8)
    throw Error(path + ": not a safetensors file (header length " + std::to_string(n) +
                " does not fit a file of " + std::to_string(p.bytes.size()) + " bytes)");
  if (n > kSafetensorsMaxHeaderBytes)
    throw Error(path + ": safetensors header of " + std::to_string(n) + " bytes is over the limit of " +
                std::to_string(kSafetensorsMaxHeaderBytes));
  try {
    p.header = nlohmann::json::parse(p.bytes.begin() + 8, p.bytes.begin() + 8 + static_cast<ptrdiff_t>(n));
  } catch (const std::exception& e) {
    throw Error(path + ": corrupt safetensors header: " + e.what());
  }
  if (!p.header.is_object()) throw Error(path + ": corrupt safetensors header: not a JSON object");
  if (p.header.size() > kSafetensorsMaxTensors + 1)
    throw Error(path + ": safetensors header lists " + std::to_string(p.header.size()) +
                " entries, over the limit of " + std::to_string(kSafetensorsMaxTensors) + " tensors");
  p.data_start = 8 + n;
  return p;
}

struct Entry {
  std::string key;
  torch::Dtype dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// One header entry, checked before anything is allocated: the dimensions are bounded in
// number, their byte size cannot overflow, and the bytes lie inside the file's data.
Entry check_entry(const std::string& key, const nlohmann::json& info, uint64_t data_size, const std::string& where) {
  Entry e{key, dtype_of(info.at("dtype").get<std::string>(), where), info.at("shape").get<std::vector<int64_t>>()};
  const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
  if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
    throw Error(where + ": data offsets lie outside the file's " + std::to_string(data_size) +
                " data bytes (truncated?)");
  e.begin = offsets[0];
  e.end = offsets[1];
  if (static_cast<int64_t>(e.shape.size()) > kSafetensorsMaxDims)
    throw Error(where + ": " + std::to_string(e.shape.size()) + " dimensions, over the limit of " +
                std::to_string(kSafetensorsMaxDims));
  for (auto s : e.shape)
    if (s < 0) throw Error(where + ": negative dimension");
  // numel * itemsize may not exceed the data bytes; dividing instead of multiplying keeps
  // every partial product below that bound, so hostile dimensions cannot wrap around.
  const uint64_t item = c10::elementSize(e.dtype);
  uint64_t numel = std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end() ? 0 : 1;
  for (auto s : e.shape) {
    if (numel == 0) break;
    if (static_cast<uint64_t>(s) > data_size / item / numel)
      throw Error(where + ": shape " + c10::str(at::IntArrayRef(e.shape)) + " needs more bytes than the file's " +
                  std::to_string(data_size) + " data bytes");
    numel *= static_cast<uint64_t>(s);
  }
  if (numel * item != e.end - e.begin)
    throw Error(where + ": shape needs " + std::to_string(numel * item) + " bytes but offsets give " +
                std::to_string(e.end - e.begin));
  return e;
}

}  // namespace

TensorMap read_safetensors(const std::string& path) { return read_safetensors_bytes(read_file(path), path); }

TensorMap read_safetensors_bytes(std::string bytes, const std::string& path) {
  Parsed p = parse(std::move(bytes), path);
  const uint64_t data_size = p.bytes.size() - p.data_start;
  std::vector<Entry> entries;
  for (const auto& [key, info] : p.header.items()) {
    if (key == "__metadata__") continue;
    const std::string where = path + ": tensor '" + key + "'";
    try {
      entries.push_back(check_entry(key, info, data_size, where));
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + ": malformed header entry: " + e.what());
    }
  }
  // Tensors may not share bytes, or a small file could declare many large tensors; with
  // the checks above, all tensors together then take at most the file's data bytes.
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k]->begin < by_offset[k - 1]->end)
      throw Error(path + ": tensors '" + by_offset[k - 1]->key + "' and '" + by_offset[k]->key +
                  "' overlap in the data (offsets must not share bytes)");
  TensorMap out;
  for (const auto& e : entries) {
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), p.bytes.data() + p.data_start + e.begin, e.end - e.begin);
    out.emplace(e.key, std::move(t));
  }
  return out;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  return read_safetensors_metadata_bytes(read_file(path), path);
}

std::map<std::string, std::string> read_safetensors_metadata_bytes(std::string bytes, const std::string& path) {
  Parsed p = parse(std::move(bytes), path);
  std::map<std::string, std::string> meta;
  if (p.header.contains("__metadata__"))
    for (const auto& [k, v] : p.header["__metadata__"].items())
      meta[k] = v.is_string() ? v.get<std::string>() : v.dump();
  return meta;
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [key, t] : tensors) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t n = c.numel() * c.element_size();
    header[key] = {{"dtype", name_of(c.scalar_type(), path + ": tensor '" + key + "'")},
                   {"shape", c.sizes().vec()},
                   {"data_offsets", {offset, offset + n}}};
    offset += n;
    contiguous.push_back(c);
  }
  std::string head = header.dump();
  head.append((8 - head.size() % 8) % 8, ' ');  // align the data to 8 bytes
  std::string out(8, '\0');
  const uint64_t n = head.size();
  std::memcpy(out.data(), &n, 8);
  out += head;
  out.reserve(out.size() + offset);
  for (const auto& c : contiguous)
    out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  write_file_atomic(path, out);
}

}  // namespace vlmadapt
