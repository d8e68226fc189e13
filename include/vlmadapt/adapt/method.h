// The method plugin interface. A method says what it learns and how it scores;
// the shared loop (trainer.h) and evaluator (evaluator.h) do everything else.
// Each method is one header in methods/ that registers itself:
//
//   struct CoopOptions { int n_ctx = 16; ...; void bind(OptionSet& s) { s.add("n_ctx", n_ctx, "..."); } };
//   class Coop : public Method { ... };
//   VLMADAPT_REGISTER_METHOD(Coop, CoopOptions, "coop", "Context optimization (Zhou et al. 2022)")
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/data/features.h>
#include <vlmadapt/core/options.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/backbone/tokenizer.h>

namespace vlmadapt {

// What a method sees of the frozen backbone and the task.
struct TaskContext {
  Clip clip{nullptr};
  Tokenizer tokenizer;
  std::string dataset;
  std::vector<std::string> classnames;
  std::vector<std::string> templates;
  torch::Device device = torch::kCPU;
};

// A batch as the loop hands it to a method. Methods that leave the image tower frozen
// get `image_features` (computed once without gradients); methods with needs_pixels()
// get `pixels` and run the image tower themselves.
struct Batch {
  torch::Tensor pixels;          // [B,3,R,R]
  torch::Tensor image_features;  // [B,E], not normalised
  torch::Tensor labels;          // [B] int64 (training and evaluation)
};

class Method : public torch::nn::Module {
 public:
  // Builds the method's buffers for a task; called again when the class set changes
  // (base-to-new). Learned state registered with register_parameter/register_buffer
  // survives; plain members are derived here.
  virtual void setup(const TaskContext& task) = 0;
  // True if the method runs the image tower itself (masks, tuned norms).
  virtual bool needs_pixels() const { return false; }
  // Parameters the shared loop optimises; empty for training-free methods.
  virtual std::vector<torch::Tensor> trainable_parameters();
  // Training-free fitting on the few-shot train and val features (caches, searches on val).
  // The run extracts those features only for methods whose fits() is true.
  virtual bool fits() const { return false; }
  virtual void fit(const FeatureSet& train, const FeatureSet& val) {}
  // Logits [B,C] of a batch.
  virtual torch::Tensor logits(const Batch& batch) = 0;
  // The training loss; cross-entropy by default.
  virtual torch::Tensor loss(const Batch& batch);
  // Test-time adaptation of one test image: `views` holds its views (view 0 is the test
  // view): always their pixels, and their frozen features unless needs_pixels(). Returns
  // logits [1,C] of the prediction. Default: no adaptation.
  virtual bool adapts_per_sample() const { return false; }
  virtual torch::Tensor adapt_and_predict(const Batch& views);

  // Saved state: every registered parameter and buffer.
  virtual TensorMap state();
  virtual void load_state(const TensorMap& state, const std::string& where);
};

struct MethodInfo {
  std::string name;
  std::string summary;
  // Fills `set` with the method's options at their defaults (listing, validation).
  std::function<void(OptionSet& set)> describe;
  // A new method with `values` ("name.key" -> text) applied over the defaults.
  std::function<std::shared_ptr<Method>(const std::map<std::string, std::string>& values)> make;
};

bool register_method(MethodInfo info);
// Throws vlmadapt::Error listing the known methods for an unknown name.
const MethodInfo& find_method(const std::string& name);
std::vector<std::string> method_names();
// The options of a method at their defaults.
OptionSet method_options(const std::string& name);
std::shared_ptr<Method> make_method(const std::string& name,
                                    const std::map<std::string, std::string>& values = {});

namespace detail {
template <class M, class O>
MethodInfo method_info(const char* name, const char* summary) {
  MethodInfo info;
  info.name = name;
  info.summary = summary;
  info.describe = [](OptionSet& set) {
    auto defaults = std::make_shared<O>();  // kept alive by the entries' closures
    defaults->bind(set);
    set.keep_alive(defaults);
  };
  info.make = [name](const std::map<std::string, std::string>& values) -> std::shared_ptr<Method> {
    O options;
    OptionSet set(name);
    options.bind(set);
    for (const auto& [key, value] : values) set.set(key, value);
    return std::make_shared<M>(options);
  };
  return info;
}
}  // namespace detail

}  // namespace vlmadapt

#define VLMADAPT_REGISTER_METHOD(Class, OptionsStruct, name, summary) \
  inline const bool Class##_registered =                             \
      ::vlmadapt::register_method(::vlmadapt::detail::method_info<Class, OptionsStruct>(name, summary));
