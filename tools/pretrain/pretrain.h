// Pretraining a small CLIP from scratch: the built-in default model. The same ViT and
// text-tower code as the real backbone, the real tokenizer, and CLIP's symmetric
// contrastive loss with a learnable temperature, on the Fashion-MNIST training images
// paired with varied generated captions (synonyms, templates, descriptions), so that
// the class names of downstream prompts are not simply the training captions.
#pragma once
#include <iosfwd>
#include <random>
#include <string>

#include <vlmadapt/core/options.h>

namespace vlmadapt {

struct PretrainOptions {
  // architecture (heads = width / 64, as CLIP)
  int image_resolution = 28;
  int patch_size = 7;
  int vision_width = 128;
  int vision_layers = 4;
  int text_width = 64;
  int text_layers = 4;
  int embed_dim = 64;
  // data
  std::string root;                // Fashion-MNIST folder ("" = the Debian package's)
  int max_images = 0;              // >0: the first N training images only (tests)
  double canonical_share = 0.25;   // how often a caption uses the canonical class name
  double crop_scale_min = 1.0;     // < 1: random resized crops with area in [min, 1] and flips per image
  // optimisation
  int epochs = 4;
  int batch_size = 256;
  double lr = 1e-3;
  double weight_decay = 0.05;
  int warmup_steps = 100;
  int seed = 0;
  std::string output = "models/default.safetensors";
  void bind(OptionSet& set);
};

// Reads [pretrain] options from an INI recipe (unknown keys are errors with a suggestion).
PretrainOptions load_pretrain_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// A caption for a Fashion-MNIST class (0..9), drawn from `rng`.
std::string fashion_caption(int label, double canonical_share, std::mt19937_64& rng);

// Trains and writes the model (open_clip keys, fp16 safetensors) to options.output.
// Returns the mean loss of the last epoch.
double pretrain(const PretrainOptions& options, std::ostream& log);

}  // namespace vlmadapt
