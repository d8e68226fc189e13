// PyTorch zip archives as data (see torch_archive.h).
#include "torch_archive.h"

#include <caffe2/serialize/file_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <set>

#include <vlmadapt/core/error.h>

#include "torch_pickle.h"

namespace vlmadapt {
namespace {

using pickle::Value;
using Kind = Value::Kind;
using caffe2::serialize::ReadAdapterInterface;

// An archive already in memory (read_*_bytes). A read past the end comes back short, as
// from a file, so the checks below see a truncated archive rather than reading out of bounds.
class BytesAdapter final : public ReadAdapterInterface {
 public:
  explicit BytesAdapter(std::string bytes) : bytes_(std::move(bytes)) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = static_cast<size_t>(std::min<uint64_t>(n, bytes_.size() - pos));
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  std::string bytes_;
};

std::shared_ptr<ReadAdapterInterface> open_file(const std::string& path) {
  try {
    return std::make_shared<caffe2::serialize::FileAdapter>(path);
  } catch (const c10::Error&) {
    throw Error(path + ": cannot open");
  }
}

struct ZipEntry {
  uint32_t crc = 0;
  uint64_t size = 0;  // uncompressed
  uint64_t compressed_size = 0;
  uint64_t offset = 0;  // of the record's local header
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
  CentralDirectory(const ReadAdapterInterface& in, const std::string& path) : path_(path), in_(in) {
    const uint64_t file_size = in_.size();
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
    // The zip64 end record is used whenever its locator precedes the end record, as miniz
    // (inside PyTorchStreamReader) decides, so that both read the same directory.
    const uint64_t eocd_abs = file_size - tail_len + eocd;
    if (eocd_abs >= 20 + 56) {
      const std::string locator = read_at(eocd_abs - 20, 20);
      if (le(locator, 0, 4) == 0x07064b50) {
        const uint64_t at = le(locator, 8, 8);
        if (at > file_size - 56) fail("zip64 end of central directory outside the file");
        const std::string eocd64 = read_at(at, 56);
        if (le(eocd64, 0, 4) == 0x06064b50)
          count = le(eocd64, 32, 8), cd_size = le(eocd64, 40, 8), cd_offset = le(eocd64, 48, 8);
      }
    }
    if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff)
      fail("zip64 end of central directory missing");
    if (count > kMaxArchiveRecords)
      fail(std::to_string(count) + " records, over the limit of " + std::to_string(kMaxArchiveRecords));
    if (cd_offset > file_size || cd_size > file_size - cd_offset)
      fail("central directory lies outside the file");
    const std::string cd = read_at(cd_offset, cd_size);
    size_t p = 0;
    std::string folder;  // of the first record, as PyTorchStreamReader takes it
    std::set<std::string> lowercase_names;
    for (uint64_t n = 0; n < count; ++n) {
      if (p + 46 > cd.size() || le(cd, p, 4) != 0x02014b50) fail("corrupt central directory");
      const size_t name_len = le(cd, p + 28, 2), extra_len = le(cd, p + 30, 2), comment_len = le(cd, p + 32, 2);
      if (p + 46 + name_len + extra_len + comment_len > cd.size()) fail("corrupt central directory");
      ZipEntry e = read_entry(cd, p, name_len, extra_len);
      const std::string name = cd.substr(p + 46, name_len);
      // PyTorchStreamReader (miniz) looks records up as <first record's folder>/<name>,
      // ignoring case; this map must find the same record, so names are one folder's, once.
      const size_t slash = name.find('/');
      if (n == 0) folder = name.substr(0, slash == std::string::npos ? 0 : slash + 1);
      if (folder.empty()) fail("record '" + name + "' is not in a folder (PyTorch archives keep all in one)");
      if (name.compare(0, folder.size(), folder) != 0)
        fail("record '" + name + "' is not in the archive's folder '" + folder + "'");
      std::string lower = name;
      for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (!lowercase_names.insert(lower).second) fail("record '" + name + "' appears twice");
      check_record(name, e, cd_offset);
      entries_[name.substr(folder.size())] = e;
      p += 46 + name_len + extra_len + comment_len;
    }
    check_no_overlap();
  }

  bool has(const std::string& name) const { return entries_.count(name) != 0; }

  // A record about to be read: present and stored uncompressed, as torch.save and
  // torch.jit.save write tensors and pickles (no zip bombs).
  const ZipEntry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("record '" + name + "' is missing");
    if (it->second.method != 0)
      fail("record '" + name + "' is compressed; PyTorch archives store records uncompressed");
    return it->second;
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": corrupt zip archive: " + what); }

 private:
  // One central directory header at cd[p] (APPNOTE 4.3.12). A size or offset of 0xffffffff
  // is in the zip64 extra field (id 1), 8 bytes each, in this order, as miniz reads it.
  ZipEntry read_entry(const std::string& cd, size_t p, size_t name_len, size_t extra_len) const {
    ZipEntry e;
    e.method = static_cast<uint16_t>(le(cd, p + 10, 2));
    e.crc = static_cast<uint32_t>(le(cd, p + 16, 4));
    e.compressed_size = le(cd, p + 20, 4);
    e.size = le(cd, p + 24, 4);
    e.offset = le(cd, p + 42, 4);
    const size_t extra_end = p + 46 + name_len + extra_len;
    for (size_t x = p + 46 + name_len; x + 4 <= extra_end;) {
      const size_t id = le(cd, x, 2), len = le(cd, x + 2, 2);
      if (x + 4 + len > extra_end) break;
      if (id == 1) {
        size_t at = x + 4;
        for (uint64_t* field : {&e.size, &e.compressed_size, &e.offset}) {
          if (*field != 0xffffffff) continue;
          if (at + 8 > x + 4 + len) fail("corrupt zip64 extra field");
          *field = le(cd, at, 8);
          at += 8;
        }
        break;
      }
      x += 4 + len;
    }
    return e;
  }

  // Every record, before any is read: its bytes lie in the file, and a stored record's
  // size is its bytes (PyTorchStreamReader allocates the declared size before reading).
  // Compressed records (TorchScript's code/) are never read; those that are must be stored
  // (entry), so a record never takes more memory than its bytes in the file.
  void check_record(const std::string& name, const ZipEntry& e, uint64_t cd_offset) const {
    if (e.offset > cd_offset || e.compressed_size > cd_offset - e.offset)
      fail("record '" + name + "' of " + std::to_string(e.compressed_size) +
           " bytes does not lie before the central directory");
    if (e.method == 0 && e.compressed_size != e.size)
      fail("record '" + name + "' is stored, but its sizes differ (" + std::to_string(e.size) + " and " +
           std::to_string(e.compressed_size) + " bytes)");
  }

  // Records may not share bytes, or a small archive could list many large records all made
  // of the same bytes; so the records read take at most the file's size together.
  void check_no_overlap() const {
    std::vector<std::pair<const std::string*, const ZipEntry*>> by_offset;
    for (const auto& [name, e] : entries_) by_offset.emplace_back(&name, &e);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const auto& a, const auto& b) { return a.second->offset < b.second->offset; });
    for (size_t k = 1; k < by_offset.size(); ++k)
      if (by_offset[k - 1].second->offset + by_offset[k - 1].second->compressed_size > by_offset[k].second->offset)
        fail("records '" + *by_offset[k - 1].first + "' and '" + *by_offset[k].first + "' overlap");
  }

  // Callers bound n by the file size (or a fixed record size) before asking.
  std::string read_at(uint64_t offset, uint64_t n) {
    std::string buf(n, '\0');
    if (offset > in_.size() || n > in_.size() - offset || in_.read(offset, buf.data(), n, "zip directory") != n)
      fail("truncated");
    return buf;
  }

  std::string path_;
  const ReadAdapterInterface& in_;
  std::map<std::string, ZipEntry> entries_;
};

// The records of one archive, each checked against the central directory before use.
class Archive {
 public:
  // `path` names the archive in errors; `in` holds its bytes (a file or memory).
  Archive(std::shared_ptr<ReadAdapterInterface> in, const std::string& path)
      : path_(path), in_(std::move(in)), directory_(*in_, path) {
    // PyTorchStreamReader reads the version record as it opens, before record() can check it.
    for (const char* version : {".data/version", "version"})
      if (directory_.has(version)) directory_.entry(version);
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(in_);
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
  std::shared_ptr<ReadAdapterInterface> in_;
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

TensorMap torchscript_tensors(std::shared_ptr<ReadAdapterInterface> in, const std::string& path) {
  Archive archive(std::move(in), path);
  const pickle::Pickle pkl(archive.text("data.pkl"), path + ": data.pkl", archive.loader());
  if (pkl.root().kind != Kind::Object)
    throw Error(path + ": data.pkl holds a " + kind_name(pkl.root()) + ", expected a TorchScript module");
  TensorMap out;
  std::set<const Value*> seen;
  collect_attributes(pkl.root(), "", seen, out);
  return out;
}

TensorMap torch_save_tensors(std::shared_ptr<ReadAdapterInterface> in, const std::string& path) {
  Archive archive(std::move(in), path);
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

}  // namespace

bool is_torchscript_archive(const std::string& path) {
  Archive archive(open_file(path), path);
  if (archive.has("constants.pkl")) return true;
  for (const auto& r : archive.names())
    if (r.rfind("code/", 0) == 0) return true;
  return false;
}

TensorMap read_torchscript_tensors(const std::string& path) { return torchscript_tensors(open_file(path), path); }

TensorMap read_torchscript_tensors_bytes(std::string bytes, const std::string& name) {
  return torchscript_tensors(std::make_shared<BytesAdapter>(std::move(bytes)), name);
}

TensorMap read_torch_save_tensors(const std::string& path) { return torch_save_tensors(open_file(path), path); }

TensorMap read_torch_save_tensors_bytes(std::string bytes, const std::string& name) {
  return torch_save_tensors(std::make_shared<BytesAdapter>(std::move(bytes)), name);
}

}  // namespace vlmadapt
