#include <vlmadapt/core/safetensors.h>

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

Parsed parse(const std::string& path) {
  Parsed p;
  p.bytes = read_file(path);
  if (p.bytes.size() < 8) throw Error(path + ": not a safetensors file (shorter than 8 bytes)");
  uint64_t n = 0;
  std::memcpy(&n, p.bytes.data(), 8);  // little-endian hosts only (x86-64, arm64)
  if (n == 0 || n > p.bytes.size() - 8)
    throw Error(path + ": not a safetensors file (header length " + std::to_string(n) +
                " does not fit a file of " + std::to_string(p.bytes.size()) + " bytes)");
  try {
    p.header = nlohmann::json::parse(p.bytes.begin() + 8, p.bytes.begin() + 8 + n);
  } catch (const std::exception& e) {
    throw Error(path + ": corrupt safetensors header: " + e.what());
  }
  if (!p.header.is_object()) throw Error(path + ": corrupt safetensors header: not a JSON object");
  p.data_start = 8 + n;
  return p;
}

}  // namespace

TensorMap read_safetensors(const std::string& path) {
  Parsed p = parse(path);
  const size_t data_size = p.bytes.size() - p.data_start;
  TensorMap out;
  for (const auto& [key, info] : p.header.items()) {
    if (key == "__metadata__") continue;
    const std::string where = path + ": tensor '" + key + "'";
    try {
      const auto dtype = dtype_of(info.at("dtype").get<std::string>(), where);
      std::vector<int64_t> shape = info.at("shape").get<std::vector<int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
        throw Error(where + ": data offsets lie outside the file (truncated?)");
      int64_t numel = 1;
      for (auto s : shape) {
        if (s < 0) throw Error(where + ": negative dimension");
        numel *= s;
      }
      const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
      if (nbytes != offsets[1] - offsets[0])
        throw Error(where + ": shape needs " + std::to_string(nbytes) + " bytes but offsets give " +
                    std::to_string(offsets[1] - offsets[0]));
      auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
      if (nbytes) std::memcpy(t.data_ptr(), p.bytes.data() + p.data_start + offsets[0], nbytes);
      out.emplace(key, std::move(t));
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + ": malformed header entry: " + e.what());
    }
  }
  return out;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  Parsed p = parse(path);
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
