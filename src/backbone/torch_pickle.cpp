// The restricted unpickler (see torch_pickle.h). Opcode meanings follow CPython's
// Lib/pickletools.py; only data opcodes are accepted, never INST/OBJ/EXT*, which name code.
#include "torch_pickle.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include <vlmadapt/core/error.h>

namespace vlmadapt::pickle {

Pickle::~Pickle() = default;

namespace {

using Kind = Value::Kind;

struct StorageType {
  const char* name;
  at::ScalarType dtype;
};
constexpr StorageType kStorages[] = {
    {"torch.FloatStorage", at::kFloat}, {"torch.HalfStorage", at::kHalf},   {"torch.BFloat16Storage", at::kBFloat16},
    {"torch.DoubleStorage", at::kDouble}, {"torch.LongStorage", at::kLong}, {"torch.IntStorage", at::kInt},
    {"torch.ShortStorage", at::kShort}, {"torch.CharStorage", at::kChar},   {"torch.ByteStorage", at::kByte},
    {"torch.BoolStorage", at::kBool}};

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

bool allowed_global(const std::string& name) {
  static const char* const kFunctions[] = {
      "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "collections.OrderedDict",
      "torch.jit._pickle.restore_type_tag", "torch.jit._pickle.build_intlist", "torch.jit._pickle.build_doublelist",
      "torch.jit._pickle.build_boollist", "torch.jit._pickle.build_tensorlist"};
  for (const char* f : kFunctions)
    if (name == f) return true;
  for (const auto& st : kStorages)
    if (name == st.name) return true;
  return starts_with(name, "__torch__.");
}

}  // namespace

class Unpickler {
 public:
  Unpickler(Pickle& out, const std::string& bytes, const std::string& where, const StorageLoader& load)
      : out_(out), b_(bytes), where_(where), load_(load) {}

  Value* run() {
    if (b_.size() > kMaxPickleBytes)
      fail("the pickle has " + std::to_string(b_.size()) + " bytes, over the limit of " +
           std::to_string(kMaxPickleBytes));
    while (true) {
      const auto op = static_cast<uint8_t>(take(1)[0]);
      if (op == '.') {  // STOP
        if (stack_.size() != 1 || !marks_.empty()) fail("malformed pickle: STOP with an unbalanced stack");
        return stack_.back();
      }
      step(op);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": " + what + " (at byte " + std::to_string(pos_) + ")");
  }

  const char* take(size_t n) {
    if (n > b_.size() - pos_) fail("truncated pickle");
    const char* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint64_t le(size_t n) {
    const char* p = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(uint8_t(p[k])) << (8 * k);
    return v;
  }
  std::string text(size_t n) { return std::string(take(n), n); }
  std::string line() {  // GLOBAL's "module\n" and "name\n"
    const size_t end = b_.find('\n', pos_);
    if (end == std::string::npos || end - pos_ > 1024) fail("malformed GLOBAL name");
    std::string s = b_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }

  Value* make(Kind kind) {
    out_.arena_.push_back(std::make_unique<Value>());
    out_.arena_.back()->kind = kind;
    return out_.arena_.back().get();
  }
  Value* make_int(int64_t i, Kind kind = Kind::Int) {
    Value* v = make(kind);
    v->i = i;
    return v;
  }
  Value* make_str(std::string s, Kind kind) {
    Value* v = make(kind);
    v->s = std::move(s);
    return v;
  }
  // Adds a child, keeping the nesting bounded: deeper structures are never needed for
  // tensors and would make any later recursion over them a stack overflow.
  void adopt(Value* parent, Value* child) {
    parent->depth = std::max(parent->depth, child->depth + 1);
    if (parent->depth > kMaxNesting) fail("containers nested deeper than the limit of " + std::to_string(kMaxNesting));
    parent->items.push_back(child);
  }

  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("malformed pickle: pop from an empty stack");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("malformed pickle: empty stack");
    return stack_.back();
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("malformed pickle: no MARK");
    std::vector<Value*> items(stack_.begin() + static_cast<ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value* tuple(std::vector<Value*> items) {
    Value* t = make(Kind::Tuple);
    for (Value* v : items) adopt(t, v);
    return t;
  }
  void put(uint64_t index) {
    if (memo_.size() >= kMaxMemo && !memo_.count(index))
      fail("more than the limit of " + std::to_string(kMaxMemo) + " memo entries");
    memo_[index] = top();
  }
  void get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("malformed pickle: memo entry " + std::to_string(index) + " was never stored");
    push(it->second);
  }
  void set_items(Value* target, const std::vector<Value*>& kv) {
    if (target->kind != Kind::Dict) fail("malformed pickle: SETITEM(S) on a non-dict");
    if (kv.size() % 2) fail("malformed pickle: SETITEMS with an odd number of items");
    for (Value* v : kv) adopt(target, v);
  }
  void append(Value* target, const std::vector<Value*>& items) {
    if (target->kind != Kind::List) fail("malformed pickle: APPEND(S) on a non-list");
    for (Value* v : items) adopt(target, v);
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80: take(1); return;  // PROTO
      case 0x95: take(8); return;  // FRAME: a length hint only
      case '(': marks_.push_back(stack_.size()); return;
      case '0': pop(); return;  // POP
      case '1': pop_mark(); return;  // POP_MARK
      case '2': push(top()); return;  // DUP
      case 'N': push(make(Kind::None)); return;
      case 0x88: push(make_int(1, Kind::Bool)); return;  // NEWTRUE
      case 0x89: push(make_int(0, Kind::Bool)); return;  // NEWFALSE
      case 'J': push(make_int(static_cast<int32_t>(le(4)))); return;  // BININT
      case 'K': push(make_int(static_cast<int64_t>(le(1)))); return;  // BININT1
      case 'M': push(make_int(static_cast<int64_t>(le(2)))); return;  // BININT2
      case 0x8a: {  // LONG1: little-endian two's complement of n <= 8 bytes
        const size_t n = le(1);
        if (n > 8) fail("integer wider than 64 bits");
        uint64_t v = n ? le(n) : 0;
        if (n && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t(0) << (8 * n);
        push(make_int(static_cast<int64_t>(v)));
        return;
      }
      case 'G': {  // BINFLOAT, big-endian
        uint64_t bits = 0;
        const char* p = take(8);
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | uint8_t(p[k]);
        Value* v = make(Kind::Float);
        std::memcpy(&v->f, &bits, 8);
        push(v);
        return;
      }
      case 'X': push(make_str(text(le(4)), Kind::Str)); return;     // BINUNICODE
      case 0x8c: push(make_str(text(le(1)), Kind::Str)); return;    // SHORT_BINUNICODE
      case 0x8d: push(make_str(text(le(8)), Kind::Str)); return;    // BINUNICODE8
      case 'T': push(make_str(text(le(4)), Kind::Bytes)); return;   // BINSTRING
      case 'U': push(make_str(text(le(1)), Kind::Bytes)); return;   // SHORT_BINSTRING
      case 'B': push(make_str(text(le(4)), Kind::Bytes)); return;   // BINBYTES
      case 'C': push(make_str(text(le(1)), Kind::Bytes)); return;   // SHORT_BINBYTES
      case 0x8e: push(make_str(text(le(8)), Kind::Bytes)); return;  // BINBYTES8
      case ')': push(make(Kind::Tuple)); return;                    // EMPTY_TUPLE
      case 't': push(tuple(pop_mark())); return;                    // TUPLE
      case 0x85: { Value* a = pop(); push(tuple({a})); return; }    // TUPLE1
      case 0x86: { Value* b = pop(); Value* a = pop(); push(tuple({a, b})); return; }  // TUPLE2
      case 0x87: {  // TUPLE3
        Value* c = pop(); Value* b = pop(); Value* a = pop();
        push(tuple({a, b, c}));
        return;
      }
      case ']': push(make(Kind::List)); return;  // EMPTY_LIST
      case 'l': {  // LIST
        Value* l = make(Kind::List);
        append(l, pop_mark());
        push(l);
        return;
      }
      case 'a': { Value* v = pop(); append(top(), {v}); return; }  // APPEND
      case 'e': { auto items = pop_mark(); append(top(), items); return; }  // APPENDS
      case '}': push(make(Kind::Dict)); return;  // EMPTY_DICT
      case 'd': {  // DICT
        Value* d = make(Kind::Dict);
        set_items(d, pop_mark());
        push(d);
        return;
      }
      case 's': { Value* v = pop(); Value* k = pop(); set_items(top(), {k, v}); return; }  // SETITEM
      case 'u': { auto kv = pop_mark(); set_items(top(), kv); return; }  // SETITEMS
      case 'h': get(le(1)); return;     // BINGET
      case 'j': get(le(4)); return;     // LONG_BINGET
      case 'q': put(le(1)); return;     // BINPUT
      case 'r': put(le(4)); return;     // LONG_BINPUT
      case 0x94: put(memo_.size()); return;  // MEMOIZE
      case 'c': {  // GLOBAL
        std::string module = line();
        global(module + "." + line());
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        Value* name = pop();
        Value* module = pop();
        if (module->kind != Kind::Str || name->kind != Kind::Str) fail("malformed STACK_GLOBAL");
        global(module->s + "." + name->s);
        return;
      }
      case 'Q': persistent(pop()); return;  // BINPERSID
      case 'R': { Value* args = pop(); Value* f = pop(); push(reduce(f, args)); return; }  // REDUCE
      case 0x81: { Value* args = pop(); Value* cls = pop(); push(new_object(cls, args)); return; }  // NEWOBJ
      case 0x92: {  // NEWOBJ_EX
        pop();  // kwargs
        Value* args = pop();
        Value* cls = pop();
        push(new_object(cls, args));
        return;
      }
      case 'b': { Value* state = pop(); build(top(), state); return; }  // BUILD
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        fail(std::string("pickle opcode ") + hex + " is not allowed (only data opcodes are read, no code)");
      }
    }
  }

  void global(const std::string& name) {
    if (!allowed_global(name))
      fail("global '" + name + "' is not allowed: only tensors, dicts and TorchScript attributes are read");
    push(make_str(name, Kind::Global));
  }

  Value* new_object(Value* cls, Value* args) {
    if (cls->kind != Kind::Global || !starts_with(cls->s, "__torch__.") || args->kind != Kind::Tuple)
      fail("only TorchScript classes (__torch__.*) may be instantiated");
    return make_str(cls->s, Kind::Object);
  }

  // BUILD: an object takes its attribute dict as data and no __setstate__ ever runs; a
  // custom state (not a dict) is kept out of reach. OrderedDict's state (_metadata) is dropped.
  void build(Value* target, Value* state) {
    if (target->kind == Kind::Object && state->kind == Kind::Dict) {
      for (Value* v : state->items) adopt(target, v);
    } else if (target->kind != Kind::Object && target->kind != Kind::Dict) {
      fail("malformed pickle: BUILD on a value that is not an object");
    }
  }

  static int64_t as_int(const Value* v) { return v->i; }

  std::vector<int64_t> ints(const Value* v, const char* what) {
    if (v->kind != Kind::Tuple && v->kind != Kind::List) fail(std::string("tensor ") + what + " is not a tuple");
    if (static_cast<int64_t>(v->items.size()) > kMaxDims)
      fail(std::string("tensor ") + what + " has " + std::to_string(v->items.size()) +
           " dimensions, over the limit of " + std::to_string(kMaxDims));
    std::vector<int64_t> out;
    for (const Value* x : v->items) {
      if (x->kind != Kind::Int) fail(std::string("tensor ") + what + " holds a non-integer");
      out.push_back(as_int(x));
    }
    return out;
  }

  Value* reduce(Value* f, Value* args) {
    if (f->kind != Kind::Global || args->kind != Kind::Tuple) fail("malformed REDUCE");
    const auto& a = args->items;
    const std::string& name = f->s;
    if (name == "torch._utils._rebuild_tensor_v2") {
      if (a.size() < 4 || a[0]->kind != Kind::Storage || a[1]->kind != Kind::Int)
        fail("malformed _rebuild_tensor_v2 arguments");
      if (++tensors_ > kMaxTensors)
        fail("more than the limit of " + std::to_string(kMaxTensors) + " tensors");
      Value* t = make(Kind::Tensor);
      t->tensor = checked_view(a[0]->tensor, as_int(a[1]), ints(a[2], "size"), ints(a[3], "stride"),
                               where_ + ": storage '" + a[0]->s + "'");
      return t;
    }
    if (name == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->kind != Kind::Tensor) fail("malformed _rebuild_parameter arguments");
      return a[0];
    }
    if (name == "collections.OrderedDict") {
      if (!a.empty()) fail("OrderedDict with constructor arguments is not supported");
      return make(Kind::Dict);
    }
    if (starts_with(name, "torch.jit._pickle.")) {  // type tags and typed lists: the value itself
      if (a.empty()) fail("malformed " + name + " arguments");
      return a[0];
    }
    if (starts_with(name, "__torch__.")) return new_object(f, args);
    fail("global '" + name + "' cannot be called");
  }

  // ('storage', torch.<T>Storage, key, location, numel): the record data/<key>, loaded
  // once however many tensors view it. Every location is read onto the CPU.
  void persistent(Value* pid) {
    const auto& a = pid->items;
    if (pid->kind != Kind::Tuple || a.size() != 5 || a[0]->kind != Kind::Str || a[0]->s != "storage" ||
        a[1]->kind != Kind::Global || a[2]->kind != Kind::Str || a[4]->kind != Kind::Int)
      fail("persistent id is not ('storage', type, key, location, numel)");
    at::ScalarType dtype = at::kFloat;
    bool known = false;
    for (const auto& st : kStorages)
      if (a[1]->s == st.name) dtype = st.dtype, known = true;
    if (!known) fail("'" + a[1]->s + "' is not a storage type");
    const std::string& key = a[2]->s;
    if (key.empty() || key.size() > 64 || key.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyz"
                                                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != std::string::npos)
      fail("storage key '" + key.substr(0, 64) + "' is not a plain record name");
    auto it = storages_.find(key);
    if (it == storages_.end()) {
      Value* s = make_str(key, Kind::Storage);
      s->tensor = load_(key, dtype, as_int(a[4]));
      it = storages_.emplace(key, s).first;
    } else if (it->second->tensor.scalar_type() != dtype || it->second->tensor.numel() != as_int(a[4])) {
      fail("storage '" + key + "' is declared twice with different types or sizes");
    }
    push(it->second);
  }

  Pickle& out_;
  const std::string& b_;
  size_t pos_ = 0;
  const std::string& where_;
  const StorageLoader& load_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  std::unordered_map<std::string, Value*> storages_;
  size_t tensors_ = 0;
};

Pickle::Pickle(const std::string& bytes, const std::string& where, const StorageLoader& load) {
  root_ = Unpickler(*this, bytes, where, load).run();
}

at::Tensor checked_view(const at::Tensor& storage, int64_t offset, const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& strides, const std::string& where) {
  const int64_t numel = storage.numel();
  auto bad = [&](const std::string& why) {
    return Error(where + ": tensor of size " + c10::str(at::IntArrayRef(sizes)) + ", stride " +
                 c10::str(at::IntArrayRef(strides)) + " and offset " + std::to_string(offset) +
                 " does not fit its storage of " + std::to_string(numel) + " elements: " + why);
  };
  if (sizes.size() != strides.size()) throw bad("size and stride differ in length");
  if (static_cast<int64_t>(sizes.size()) > kMaxDims) throw bad("more than " + std::to_string(kMaxDims) + " dimensions");
  if (offset < 0 || offset > numel) throw bad("offset outside the storage");
  for (size_t d = 0; d < sizes.size(); ++d)
    if (sizes[d] < 0 || strides[d] < 0) throw bad("negative size or stride");
  if (std::find(sizes.begin(), sizes.end(), 0) != sizes.end()) return storage.as_strided(sizes, strides, offset);
  // The last element sits at offset + sum((size - 1) * stride). Each term is below 2^126
  // and the sum is checked after each one, so 128 bits never wrap around into range.
  __int128 last = offset;
  for (size_t d = 0; d < sizes.size(); ++d) {
    last += static_cast<__int128>(sizes[d] - 1) * strides[d];
    if (last >= numel) throw bad("its last element lies outside the storage");
  }
  if (last >= numel) throw bad("the storage is empty");
  return storage.as_strided(sizes, strides, offset);
}

}  // namespace vlmadapt::pickle
