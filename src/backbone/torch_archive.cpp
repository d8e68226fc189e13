// PyTorch zip archives as data (see torch_archive.h).
#include "torch_archive.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <vlmadapt/core/error.h>

#include "torch_pickle.h"

namespace vlmadapt {
namespace {

using pickle::Value;
using Kind = Value::Kind;

struct ZipEntry {
  uint32_t crc = 0;
  uint64_t size = 0;
  uint16_t method = 0;
};

uint64_t le(const std::string& b, size_t at, size_t n) {
  uint64_t v = 0;
  for (size_t k = 0; k < n; ++k) v |= uint64_t(uint8_t(b[at + k])) << (8 * k);
  return v;
}

// The zip central directory: what each record's CRC-32, size and compression must be.
// PyTorchStreamReader keeps these to itself, so the directory is read here (PKWARE
// APPNOTE 4.3.12-4.3.16, with the zip64 end records torch writes for large archives).
class CentralDirectory {
 public:
  explicit CentralDirectory(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) throw Error(path + ": cannot open");
    const uint64_t file_size = std::filesystem::file_size(path);
    const uint64_t tail_len = std::min<uint64_t>(file_size, 22 + 65535);
    const std::string tail = read_at(file_size - tail_len, tail_len);
    size_t eocd = std::string::npos;  // the last signature: a comment may hold an earlier one
    for (size_t p = tail.size() >= 22 ? tail.size() - 21 : 0; p-- > 0;)
      if (le(tail, p, 4) == 0x06054b50) {
        eocd = p;
        break;
      }
    if (eocd == std::string::npos) fail("no end of central directory (truncated?)");
    uint64_t count = le(tail, eocd + 10, 2), cd_size = le(tail, eocd + 12, 4), cd_offset = le(tail, eocd + 16, 4);
    if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
      const uint64_t eocd_abs = file_size - tail_len + eocd;
      if (eocd_abs < 20) fail("zip64 locator missing");
      const std::string locator = read_at(eocd_abs - 20, 20);
      if (le(locator, 0, 4) != 0x07064b50) fail("zip64 locator missing");
      const std::string eocd64 = read_at(le(locator, 8, 8), 56);
      if (le(eocd64, 0, 4) != 0x06064b50) fail("zip64 end of central directory missing");
      count = le(eocd64, 32, 8), cd_size = le(eocd64, 40, 8), cd_offset = le(eocd64, 48, 8);
    }
    if (count > kMaxArchiveRecords)
      fail(std::to_string(count) + " records, over the limit of " + std::to_string(kMaxArchiveRecords));
    if (cd_offset > file_size || cd_size > file_size - cd_offset)
      fail("central directory lies outside the file");
    const std::string cd = read_at(cd_offset, cd_size);
    size_t p = 0;
    for (uint64_t n = 0; n < count; ++n) {
      if (p + 46 > cd.size() || le(cd, p, 4) != 0x02014b50) fail("corrupt central directory");
      const size_t name_len = le(cd, p + 28, 2), extra_len = le(cd, p + 30, 2), comment_len = le(cd, p + 32, 2);
      if (p + 46 + name_len + extra_len + comment_len > cd.size()) fail("corrupt central directory");
      ZipEntry e;
      e.method = static_cast<uint16_t>(le(cd, p + 10, 2));
      e.crc = static_cast<uint32_t>(le(cd, p + 16, 4));
      e.size = le(cd, p + 24, 4);
      if (e.size == 0xffffffff) {  // the zip64 extra field holds the real uncompressed size first
        for (size_t x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
          const size_t id = le(cd, x, 2), len = le(cd, x + 2, 2);
          if (id == 1 && len >= 8 && x + 4 + len <= cd.size()) e.size = le(cd, x + 4, 8);
          x += 4 + len;
        }
      }
      std::string name = cd.substr(p + 46, name_len);
      const size_t slash = name.find('/');  // PyTorchStreamReader names records without the archive folder
      entries_[slash == std::string::npos ? name : name.substr(slash + 1)] = e;
      p += 46 + name_len + extra_len + comment_len;
    }
  }

  const ZipEntry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("record '" + name + "' is missing");
    if (it->second.method != 0)
      fail("record '" + name + "' is compressed; PyTorch archives store records uncompressed");
    return it->second;
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": corrupt zip archive: " + what); }

 private:
  std::string read_at(uint64_t offset, uint64_t n) {
    std::string buf(n, '\0');
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(buf.data(), static_cast<std::streamsize>(n));
    if (static_cast<uint64_t>(in_.gcount()) != n) fail("truncated");
    return buf;
  }

  std::string path_;
  std::ifstream in_;
  std::map<std::string, ZipEntry> entries_;
};

// The records of one archive, each checked against the central directory before use.
class Archive {
 public:
  explicit Archive(const std::string& path) : path_(path), directory_(path) {
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    } catch (const c10::Error& e) {
      throw Error(path + ": corrupt or truncated zip archive: " + e.what_without_backtrace());
    }
  }

  bool has(const std::string& name) { return reader_->hasRecord(name); }
  std::vector<std::string> names() { return reader_->getAllRecords(); }

  // The bytes of a record, after its size (uncompressed, so bounded by the file) and CRC-32.
  at::DataPtr record(const std::string& name, size_t& size) {
    const ZipEntry& e = directory_.entry(name);
    at::DataPtr data;
    try {
      std::tie(data, size) = reader_->getRecord(name);
    } catch (const c10::Error& err) {
      throw Error(path_ + ": cannot read record '" + name + "' (truncated?): " + err.what_without_backtrace());
    }
    if (size != e.size) directory_.fail("record '" + name + "' size differs from the central directory");
    const uint32_t crc = static_cast<uint32_t>(crc32_z(0, static_cast<const Bytef*>(data.get()), size));
    if (crc != e.crc) directory_.fail("record '" + name + "' fails its CRC-32 check (the file is damaged)");
    return data;
  }

  std::string text(const std::string& name) {
    size_t size = 0;
    at::DataPtr data = record(name, size);
    return std::string(static_cast<const char*>(data.get()), size);
  }

  // data/<key> as a 1-D tensor of `numel` elements, sharing the record's memory.
  at::Tensor storage(const std::string& key, at::ScalarType dtype, int64_t numel) {
    const std::string name = "data/" + key;
    size_t size = 0;
    auto data = std::make_shared<at::DataPtr>(record(name, size));
    const size_t item = c10::elementSize(dtype);
    if (numel < 0 || size % item != 0 || static_cast<uint64_t>(numel) != size / item)
      throw Error(path_ + ": storage '" + key + "' declares " + std::to_string(numel) + " elements of " +
                  std::to_string(item) + " bytes but its record holds " + std::to_string(size) + " bytes");
    return torch::from_blob(data->get(), {numel}, [data](void*) mutable { data.reset(); },
                            torch::TensorOptions().dtype(dtype));
  }

  pickle::StorageLoader loader() {
    return [this](const std::string& key, at::ScalarType dtype, int64_t numel) { return storage(key, dtype, numel); };
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  CentralDirectory directory_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
};

std::string kind_name(const Value& v) {
  static const char* const kNames[] = {"None", "bool", "int", "float", "str", "bytes", "tuple",
                                       "list", "dict", "global", "object", "storage", "tensor"};
  return kNames[static_cast<int>(v.kind)];
}

// Tensor attributes of TorchScript objects, depth first in attribute order (the order of
// named_parameters). Each object is visited once, so a shared submodule cannot multiply work.
void collect_attributes(const Value& object, const std::string& prefix, std::set<const Value*>& seen,
                        TensorMap& out) {
  if (!seen.insert(&object).second) return;
  for (size_t k = 0; k + 1 < object.items.size(); k += 2) {
    const Value& key = *object.items[k];
    const Value& value = *object.items[k + 1];
    if (key.kind != Kind::Str) continue;
    if (value.kind == Kind::Tensor) out.emplace(prefix + key.s, value.tensor);
    else if (value.kind == Kind::Object) collect_attributes(value, prefix + key.s + ".", seen, out);
  }
}

}  // namespace

bool is_torchscript_archive(const std::string& path) {
  Archive archive(path);
  if (archive.has("constants.pkl")) return true;
  for (const auto& r : archive.names())
    if (r.rfind("code/", 0) == 0) return true;
  return false;
}

TensorMap read_torchscript_tensors(const std::string& path) {
  Archive archive(path);
  const pickle::Pickle pkl(archive.text("data.pkl"), path + ": data.pkl", archive.loader());
  if (pkl.root().kind != Kind::Object)
    throw Error(path + ": data.pkl holds a " + kind_name(pkl.root()) + ", expected a TorchScript module");
  TensorMap out;
  std::set<const Value*> seen;
  collect_attributes(pkl.root(), "", seen, out);
  return out;
}

TensorMap read_torch_save_tensors(const std::string& path) {
  Archive archive(path);
  const pickle::Pickle pkl(archive.text("data.pkl"), path + ": data.pkl", archive.loader());
  const Value* dict = &pkl.root();
  auto find = [](const Value& d, const std::string& key) -> const Value* {
    for (size_t k = 0; k + 1 < d.items.size(); k += 2)
      if (d.items[k]->kind == Kind::Str && d.items[k]->s == key) return d.items[k + 1];
    return nullptr;
  };
  if (dict->kind == Kind::Dict)
    if (const Value* inner = find(*dict, "state_dict"); inner && inner->kind == Kind::Dict) dict = inner;
  if (dict->kind != Kind::Dict)
    throw Error(path + ": expected a state dict (a dict of tensors), found a " + kind_name(*dict));
  TensorMap out;
  for (size_t k = 0; k + 1 < dict->items.size(); k += 2) {
    const Value& key = *dict->items[k];
    const Value& value = *dict->items[k + 1];
    if (key.kind != Kind::Str || value.kind != Kind::Tensor)
      throw Error(path + ": expected a state dict of name -> tensor, found an entry of " + kind_name(value));
    out[key.s] = value.tensor;
  }
  return out;
}

}  // namespace vlmadapt
