#include <vlmadapt/adapt/tta_prompt.h>

#include <filesystem>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/safetensors.h>

namespace vlmadapt {

void TunedPromptOptions::bind(OptionSet& s) {
  s.add("n_ctx", prompt.n_ctx, "context vectors when ctx_init is empty (random init, std 0.02)")
      .add("ctx_init", prompt.ctx_init, "initialise the context from these words; n_ctx = their count")
      .add("init_run", init_run, "a finished coop run folder whose context initialises the prompt")
      .add("lr", lr, "AdamW learning rate").at_least(0)
      .add("weight_decay", weight_decay, "AdamW weight decay").at_least(0)
      .add("steps", steps, "optimisation steps per test image").at_least(0)
      .add("continual", continual, "carry the tuned prompt and optimizer on to the next image (no reset)")
      .add("text_chunk", text_chunk, "classes per text-tower pass, recomputed for gradients (0 = all)").at_least(0);
}

torch::Tensor coop_context(const std::string& run_dir) {
  const auto file = (std::filesystem::path(run_dir) / "method.safetensors").string();
  if (!std::filesystem::exists(file)) throw Error(file + ": no such file (init_run must be a finished coop run)");
  const TensorMap state = read_safetensors(file);
  auto it = state.find("prompt_learner.ctx");
  if (it == state.end()) throw Error(file + ": no 'prompt_learner.ctx' (init_run must be a coop run)");
  if (it->second.dim() != 2)
    throw Error(file + ": 'prompt_learner.ctx' is class-specific; a unified context [n_ctx, width] is expected");
  return it->second.to(torch::kFloat);
}

void TunedPrompt::setup(torch::nn::Module& owner, const TaskContext& task) {
  if (!learner_) {
    PromptLearnerOptions po = options_.prompt;
    torch::Tensor init;
    if (!options_.init_run.empty()) {
      init = coop_context(options_.init_run);
      po.ctx_init.clear();
      po.n_ctx = static_cast<int>(init.size(0));
      po.csc = false;
    }
    learner_ = owner.register_module("prompt_learner", PromptLearner(task.clip, task.tokenizer, po, 1));
    if (init.defined()) {
      if (init.size(1) != learner_->ctx().size(1))
        throw Error(options_.init_run + ": context width " + std::to_string(init.size(1)) + ", the model's is " +
                    std::to_string(learner_->ctx().size(1)));
      torch::NoGradGuard no_grad;
      learner_->ctx().copy_(init);
    }
  }
  learner_->chunk = options_.text_chunk;
  learner_->set_classes(task.classnames);
  restart_from_current();
}

void TunedPrompt::restart_from_current() {
  initial_ctx_ = learner_->ctx().detach().clone();
  optimizer_.reset();
  at_initial_ = false;
  initial_classifier_ = torch::Tensor();
}

void TunedPrompt::begin_image() {
  if (optimizer_ && options_.continual) return;
  {
    torch::NoGradGuard no_grad;
    learner_->ctx().copy_(initial_ctx_);
  }
  // A new AdamW has exactly the initial (empty) state: the reset TPT does by reloading it.
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      std::vector<torch::Tensor>{learner_->ctx()},
      torch::optim::AdamWOptions(options_.lr).weight_decay(options_.weight_decay));
  at_initial_ = !options_.continual;
}

torch::Tensor TunedPrompt::classifier() {
  const bool reuse = at_initial_ && torch::GradMode::is_enabled();
  if (reuse && initial_classifier_.defined()) return initial_classifier_;
  auto text = learner_->text_features();
  auto out = text / text.norm(2, -1, true);
  if (reuse) initial_classifier_ = out;
  return out;
}

void TunedPrompt::step(const torch::Tensor& loss) {
  optimizer_->zero_grad();
  loss.backward({}, /*retain_graph=*/at_initial_);  // the first step's graph serves the next image
  optimizer_->step();
  at_initial_ = false;
}

}  // namespace vlmadapt
