// The method plugin interface. A method declares what it consumes and which phases it
// has (its Contract), says what it learns and how it scores; the shared loop (trainer.h),
// evaluator (evaluator.h) and stream (run.h) do everything else, dispatching on the
// contract in one place (engine/dispatch.h). Each method is one header in methods/ that
// registers itself; a header outside the tree joins a CLI through vlmadapt_add_cli()
// (README, "Write your own method"; examples/plugin/).
//
//   struct CoopOptions { int n_ctx = 16; ...; void bind(OptionSet& s) { s.add("n_ctx", n_ctx, "...").at_least(1); } };
//   class Coop : public Method {
//     Contract contract() const override { return {Input::Features, /*fits=*/false, /*trains=*/true}; }
//     ...
//   };
//   VLMADAPT_REGISTER_METHOD(Coop, CoopOptions, "coop", "Context optimization (Zhou et al. 2022)")
//
// The order of calls, for every method:
//   1. the factory builds it from its typed options (defaults, then the recipe's [name] keys);
//   2. setup(task) with the frozen backbone and the class names (again whenever the class
//      set changes, e.g. for the new classes of base-to-new). The backbone is already on
//      the task's device: a method creates its own tensors there; the shared code moves
//      nothing of the method's;
//   3. load_state(saved) when the state comes from a file (eval --run, resume): always
//      after setup, then on_state_loaded();
//   4. fit(data) on frozen features when contract().fits: the support set (the few-shot
//      train split, data.support's images), the validation split when train.selection =
//      val, the unlabelled test features when the contract asks for them (FitData);
//   5. training when contract().trains: on_train_begin, then per step loss() -> backward
//      -> after_backward() -> optimizer step, on_epoch_end() after each epoch (before
//      its checkpoint, so that what the hook changes is saved with it), on_train_end();
//      With contract().pseudolabels the training runs in rounds (engine/pseudolabels.h):
//      per round, pseudolabel_logits() over the unlabelled images, on_round_begin(), then
//      the loop above on the labelled and pseudolabelled images;
//   6. evaluation: logits() per batch, or, when the method adapts, on_stream_begin(),
//      adapt_and_predict() per test image in stream order, on_stream_end().
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <typeindex>
#include <vector>

#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/backbone/tokenizer.h>
#include <vlmadapt/core/options.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/data/features.h>

namespace vlmadapt {

// What a method sees of the frozen backbone and the task.
struct TaskContext {
  Clip clip{nullptr};
  Tokenizer tokenizer;
  std::string dataset;
  std::vector<std::string> classnames;
  std::vector<std::string> templates;
  torch::Device device = torch::kCPU;
  int shots = 0;  // the few-shot split's images per class; 0 = the whole train split (or none)
  uint64_t seed = 1;  // the run's data.seed: a method's own random draws start from it
};

// What a method takes of each image: the frozen image tower's features (computed once,
// without gradients, cached on disk), or the pixels (it runs the image tower itself).
enum class Input { Features, Pixels };
// Whether and how a method adapts at test time, one image at a time:
//   None     - logits() of each batch;
//   Episodic - adapt_and_predict() per image, starting every image from the same state;
//   Online   - adapt_and_predict() per image in stream order, its state carried on.
enum class Adaptation { None, Episodic, Online };
inline const std::vector<std::pair<Input, std::string>>& enum_names(Input) {
  static const std::vector<std::pair<Input, std::string>> n{{Input::Features, "features"}, {Input::Pixels, "pixels"}};
  return n;
}
inline const std::vector<std::pair<Adaptation, std::string>>& enum_names(Adaptation) {
  static const std::vector<std::pair<Adaptation, std::string>> n{
      {Adaptation::None, "none"}, {Adaptation::Episodic, "episodic"}, {Adaptation::Online, "online"}};
  return n;
}

// A method's declaration of what it consumes and which phases it has. The shared code
// reads it, never the method's type.
struct Contract {
  Input input = Input::Features;
  bool fits = false;    // fit() on the few-shot train and val features (training-free)
  bool trains = false;  // the shared loop optimises trainable_parameters() on loss()
  Adaptation adaptation = Adaptation::None;
  // fit(): the support set as this many augmented views of each image (train.scale_min,
  // train.flip; Tip-Adapter's augment_epoch), 0 = the test view, -1 = no support set
  // (ZPE weighs prompts on unlabelled images only).
  int support_views = 0;
  // fit(): also the test images' features, without labels (ZPE's test-mean correction:
  // transductive, label-free).
  bool unlabelled_test = false;
  // Trains in rounds on the labelled images plus pseudolabels of the unlabelled ones
  // (data.paradigm ssl | ul | trzsl; engine/pseudolabels.h); the hooks below say how many
  // rounds and pseudolabels.
  bool pseudolabels = false;
  bool adapts() const { return adaptation != Adaptation::None; }
};

// How a method may choose hyper-parameters and epochs (train.selection): on the
// validation split only, or never (its paper's fixed values or a validation-free rule,
// as its help says). No mode looks at the test split's labels.
enum class Selection { Val, None };
inline const std::vector<std::pair<Selection, std::string>>& enum_names(Selection) {
  static const std::vector<std::pair<Selection, std::string>> n{{Selection::Val, "val"}, {Selection::None, "none"}};
  return n;
}

// What fit() gets: frozen image features, not normalised.
struct FitData {
  // The support set: the few-shot train split, with data.support's images added or in
  // its place. With contract().support_views = V > 0 its rows are V augmented views of
  // each of the N images, view-major (row v*N + i); otherwise the test view (V = 1).
  FeatureSet support;
  int64_t views = 1;
  FeatureSet val;            // the validation split; empty when selection = none
  torch::Tensor unlabelled;  // [M,E] test features when contract().unlabelled_test
  Selection selection = Selection::Val;

  int64_t images() const { return views > 0 ? support.features.size(0) / views : 0; }
  // [N,E] the mean of each image's views (Tip-Adapter's keys before normalising), [N] labels.
  torch::Tensor view_mean() const { return support.features.view({views, images(), -1}).mean(0); }
  torch::Tensor image_labels() const { return support.labels.narrow(0, 0, images()); }
};

// A batch as the shared code hands it to a method: `image_features` when the contract
// takes features, `pixels` when it takes pixels. Test-time views always carry their
// pixels too (a second model, e.g. RLCF's reward, may need them).
struct Batch {
  torch::Tensor pixels;          // [B,3,R,R]
  torch::Tensor image_features;  // [B,E], not normalised
  torch::Tensor labels;          // [B] int64 (training and evaluation)
  torch::Tensor pseudo;          // [B] bool: the label is a pseudolabel; undefined when none is
  // Data parallel (engine/distributed.h): the items and pseudolabels of the global batch
  // this one is a rank's slice of, for losses normalised per group rather than per batch
  // (the trainer scales each rank's loss by its slice's share); 0: this batch is whole.
  int64_t global_items = 0, global_pseudo = 0;
};

// One round of pseudolabel training (contract().pseudolabels), as on_round_begin sees it.
struct PseudolabelRound {
  int64_t round = 0, rounds = 1;
  int64_t labelled = 0;        // labelled training images
  int64_t pseudolabelled = 0;  // pseudolabelled ones (an image may hold several classes)
  std::string paradigm;        // data.paradigm: ssl | ul | trzsl
};

class Method : public torch::nn::Module {
 public:
  virtual Contract contract() const = 0;
  // Builds the method's derived members for a task (see the order of calls above).
  // Learned state registered with register_parameter/register_buffer survives.
  virtual void setup(const TaskContext& task) = 0;
  // Logits [B,C] of a batch.
  virtual torch::Tensor logits(const Batch& batch) = 0;

  // contract().fits: training-free fitting on frozen features (FitData).
  virtual void fit(const FitData& data) {}
  // The same with the test view of `train` as the support set (tests, small callers).
  void fit(const FeatureSet& train, const FeatureSet& val) { fit(FitData{train, 1, val}); }
  // What fit() or training chose (a searched alpha, the kept epoch), recorded in run.json.
  virtual std::map<std::string, double> chosen() const { return {}; }
  // contract().trains: the parameters the loop optimises (by default every registered
  // parameter with requires_grad) and the loss (cross-entropy of logits() by default).
  virtual std::vector<torch::Tensor> trainable_parameters();
  virtual torch::Tensor loss(const Batch& batch);
  // contract().adapts(): the views of one test image (view 0 the test view) -> logits [1,C].
  // The default scores view 0 without adapting.
  virtual torch::Tensor adapt_and_predict(const Batch& views);

  // Hooks of the shared code, each called from one place (see the order of calls).
  virtual void on_train_begin(int64_t epochs) {}
  virtual void after_backward() {}  // gradients are set; the optimizer has not stepped
  virtual void on_epoch_end(int64_t epoch, int64_t epochs) {}  // epoch 0-based
  virtual void on_train_end() {}
  virtual void on_stream_begin() {}
  virtual void on_stream_end() {}
  virtual void on_state_loaded() {}  // re-derive members from the loaded state

  // contract().pseudolabels: rounds of training, the pseudolabels per class of a round
  // (of `unlabelled` images over `classes` candidate classes), the logits they are chosen
  // by before round `round` (the model after the previous round; round 0's is the
  // method's zero-shot start), and the start of each round.
  virtual int64_t pseudolabel_rounds() const { return 1; }
  virtual int64_t pseudolabels_per_class(int64_t round, int64_t unlabelled, int64_t classes) const { return 16; }
  virtual torch::Tensor pseudolabel_logits(const Batch& batch, int64_t round) { return logits(batch); }
  virtual void on_round_begin(const PseudolabelRound& round) {}

  // Saved state: every registered parameter and buffer.
  TensorMap state();
  // Strict: exactly this method's keys, each with its registered shape, except the
  // buffers registered with register_data_buffer (their shape is the data's). Ends with
  // on_state_loaded(). `where` names the source in errors.
  void load_state(const TensorMap& state, const std::string& where);

 protected:
  // A buffer whose shape is set by the data (fit() sets it with set_data), e.g. a
  // linear probe's [C,E] weights or a cache of few-shot features.
  torch::Tensor register_data_buffer(const std::string& name, torch::Tensor tensor);
  // A learned parameter whose shape is set by the data (Tip-Adapter-F's keys, CLAP's
  // prototypes): set_data in fit(), before the loop builds its optimizer.
  torch::Tensor register_data_parameter(const std::string& name, torch::Tensor tensor);

 private:
  std::set<std::string> data_buffers_;
};

// ---- the registry ------------------------------------------------------------------

// A method's options: its typed options struct, with the OptionSet bound to its fields.
// Values are parsed once, into the struct, as a recipe is read; the factory takes the
// struct. Copies are deep.
class MethodOptions {
 public:
  explicit MethodOptions(const std::string& method);  // the method's defaults
  MethodOptions(const MethodOptions& other);
  MethodOptions& operator=(const MethodOptions& other);
  const std::string& method() const { return method_; }
  const OptionSet& set() const { return set_; }
  // Parses one "method.key" value into the struct; throws vlmadapt::Error naming the key.
  void apply(const std::string& key, const std::string& value) { set_.set(key, value); }
  const void* as_void() const { return typed_.get(); }
  template <class O>
  const O& as() const {
    if (type_ != std::type_index(typeid(O))) throw_wrong_type();
    return *static_cast<const O*>(typed_.get());
  }

 private:
  [[noreturn]] void throw_wrong_type() const;
  std::string method_;
  std::shared_ptr<void> typed_;
  std::type_index type_ = typeid(void);
  OptionSet set_{""};
};

struct MethodInfo {
  std::string name;
  std::string summary;
  std::type_index options_type = typeid(void);
  std::function<std::shared_ptr<void>(const void* from)> copy_options;  // null from: defaults
  std::function<void(void* options, OptionSet& set)> bind;
  std::function<std::shared_ptr<Method>(const void* options)> make;
};

bool register_method(MethodInfo info);
// Throws vlmadapt::Error listing the known methods for an unknown name.
const MethodInfo& find_method(const std::string& name);
std::vector<std::string> method_names();
// The options of a method at their defaults (listing, validation).
inline MethodOptions method_options(const std::string& name) { return MethodOptions(name); }
std::shared_ptr<Method> make_method(const MethodOptions& options);
// Convenience: `values` ("name.key" -> text) over the defaults.
std::shared_ptr<Method> make_method(const std::string& name, const std::map<std::string, std::string>& values = {});

namespace detail {
template <class M, class O>
MethodInfo method_info(const char* name, const char* summary) {
  MethodInfo info;
  info.name = name;
  info.summary = summary;
  info.options_type = typeid(O);
  info.copy_options = [](const void* from) -> std::shared_ptr<void> {
    return from ? std::make_shared<O>(*static_cast<const O*>(from)) : std::make_shared<O>();
  };
  info.bind = [](void* options, OptionSet& set) { static_cast<O*>(options)->bind(set); };
  info.make = [](const void* options) -> std::shared_ptr<Method> { return std::make_shared<M>(*static_cast<const O*>(options)); };
  return info;
}
}  // namespace detail

}  // namespace vlmadapt

#define VLMADAPT_REGISTER_METHOD(Class, OptionsStruct, name, summary) \
  inline const bool Class##_registered =                             \
      ::vlmadapt::register_method(::vlmadapt::detail::method_info<Class, OptionsStruct>(name, summary));
