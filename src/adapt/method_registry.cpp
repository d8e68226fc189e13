// The method registry and the defaults of the Method base class.
#include <vlmadapt/adapt/method.h>

#include <iostream>
#include <sstream>

#include <vlmadapt/core/error.h>

namespace vlmadapt {

// Defined in the CMake-generated methods_all.cpp, which includes every methods/*.h.
// Calling it makes the linker keep that object file (and the registrations in it)
// when the library is linked statically.
void link_builtin_methods();

namespace {

// Function-local static: registrations run during static initialisation of other
// translation units, in an unspecified order, so the map must be built on first use.
std::map<std::string, MethodInfo>& registry() {
  static std::map<std::string, MethodInfo> methods;
  return methods;
}

std::string shape_text(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace

bool register_method(MethodInfo info) {
  // Runs before main: an exception here would terminate, so problems are reported and
  // the registration refused instead.
  if (info.name.empty() || !info.copy_options || !info.bind || !info.make) {
    std::cerr << "vlmadapt: ignoring a method registration without a name or factory\n";
    return false;
  }
  auto [it, inserted] = registry().emplace(info.name, info);
  if (!inserted) {
    std::cerr << "vlmadapt: method '" << info.name << "' registered twice; keeping the first\n";
    return false;
  }
  return true;
}

const MethodInfo& find_method(const std::string& name) {
  link_builtin_methods();
  const auto& methods = registry();
  if (auto it = methods.find(name); it != methods.end()) return it->second;
  std::string known;
  std::vector<std::string> names;
  for (const auto& [n, info] : methods) {
    known += (known.empty() ? "" : ", ") + n;
    names.push_back(n);
  }
  std::string message = "unknown method '" + name + "' (known: " +
                        (known.empty() ? "none" : known) + ")";
  if (!names.empty()) message += "; did you mean '" + nearest_key(name, names) + "'?";
  throw Error(message);
}

std::vector<std::string> method_names() {
  link_builtin_methods();
  std::vector<std::string> names;
  for (const auto& [name, info] : registry()) names.push_back(name);
  return names;  // sorted: the map orders them
}

// ---- MethodOptions ----------------------------------------------------------

MethodOptions::MethodOptions(const std::string& method) : method_(method), set_(method) {
  const MethodInfo& info = find_method(method);
  typed_ = info.copy_options(nullptr);
  type_ = info.options_type;
  info.bind(typed_.get(), set_);
}

MethodOptions::MethodOptions(const MethodOptions& other) : method_(other.method_), type_(other.type_), set_(other.method_) {
  const MethodInfo& info = find_method(method_);
  typed_ = info.copy_options(other.typed_.get());  // the set binds to this copy's fields
  info.bind(typed_.get(), set_);
}

MethodOptions& MethodOptions::operator=(const MethodOptions& other) {
  if (this != &other) {
    MethodOptions copy(other);
    method_ = copy.method_;
    type_ = copy.type_;
    typed_ = copy.typed_;
    set_ = OptionSet(method_);
    find_method(method_).bind(typed_.get(), set_);
  }
  return *this;
}

void MethodOptions::throw_wrong_type() const {
  throw Error("the options of method '" + method_ + "' are not of the type asked for");
}

std::shared_ptr<Method> make_method(const MethodOptions& options) {
  return find_method(options.method()).make(options.as_void());
}

std::shared_ptr<Method> make_method(const std::string& name, const std::map<std::string, std::string>& values) {
  MethodOptions options(name);
  for (const auto& [key, value] : values) options.apply(key, value);
  return make_method(options);
}

// ---- Method defaults --------------------------------------------------------

std::vector<torch::Tensor> Method::trainable_parameters() {
  std::vector<torch::Tensor> trainable;
  for (const auto& p : parameters(/*recurse=*/true))
    if (p.requires_grad()) trainable.push_back(p);
  return trainable;
}

torch::Tensor Method::loss(const Batch& batch) {
  return torch::nn::functional::cross_entropy(logits(batch), batch.labels);
}

torch::Tensor Method::adapt_and_predict(const Batch& views) {
  // No adaptation: score view 0 (the test view) alone.
  auto first = [](const torch::Tensor& t) { return t.defined() ? t.narrow(0, 0, 1) : t; };
  Batch view0{first(views.pixels), first(views.image_features), first(views.labels)};
  torch::NoGradGuard no_grad;
  return logits(view0);
}

torch::Tensor Method::register_data_buffer(const std::string& name, torch::Tensor tensor) {
  data_buffers_.insert(name);
  return register_buffer(name, std::move(tensor));
}

torch::Tensor Method::register_data_parameter(const std::string& name, torch::Tensor tensor) {
  data_buffers_.insert(name);
  return register_parameter(name, std::move(tensor));
}

TensorMap Method::state() {
  TensorMap out;
  for (const auto& p : named_parameters(/*recurse=*/true)) out[p.key()] = p.value().detach().clone();
  for (const auto& b : named_buffers(/*recurse=*/true)) out[b.key()] = b.value().detach().clone();
  return out;
}

void Method::load_state(const TensorMap& state, const std::string& where) {
  // Strict: the saved state must hold exactly this method's tensors, with their shapes,
  // so that a checkpoint of another method or configuration fails loudly. Data buffers
  // take the saved shape (and dtype).
  std::map<std::string, torch::Tensor> mine;
  for (const auto& p : named_parameters(true)) mine[p.key()] = p.value();
  for (const auto& b : named_buffers(true)) mine[b.key()] = b.value();
  for (const auto& [key, saved] : state)
    if (!mine.count(key)) throw Error(where + ": unexpected key '" + key + "' in saved state");
  for (const auto& [key, target] : mine) {
    auto it = state.find(key);
    if (it == state.end()) throw Error(where + ": missing key '" + key + "' in saved state");
    if (!data_buffers_.count(key) && it->second.sizes() != target.sizes())
      throw Error(where + ": key '" + key + "' has shape " + shape_text(it->second) +
                  ", expected " + shape_text(target));
  }
  {
    torch::NoGradGuard no_grad;
    for (auto& [key, target] : mine) {
      const auto& saved = state.at(key);
      // set_data keeps the tensor (and an optimizer's reference to a parameter) in place.
      if (data_buffers_.count(key)) target.set_data(saved.to(target.device()).clone());
      else target.copy_(saved);
    }
  }
  on_state_loaded();
}

}  // namespace vlmadapt
