#include "pretrain/pretrain.h"

#include <boost/program_options/options_description.hpp>
#include <boost/program_options/parsers.hpp>

#include <cmath>
#include <fstream>
#include <iostream>
#include <numeric>

#include <vlmadapt/data/augment.h>
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/progress.h>
#include <vlmadapt/backbone/tokenizer.h>

#include "src/core/seeded.h"

namespace vlmadapt {

void PretrainOptions::bind(OptionSet& s) {
  s.add("image_resolution", image_resolution, "input side in pixels (patch_size divides it)")
      .add("patch_size", patch_size, "ViT patch size")
      .add("vision_width", vision_width, "ViT width (a multiple of 64)")
      .add("vision_layers", vision_layers, "ViT layers")
      .add("text_width", text_width, "text transformer width (a multiple of 64)")
      .add("text_layers", text_layers, "text transformer layers")
      .add("embed_dim", embed_dim, "joint embedding size")
      .add("root", root, "Fashion-MNIST folder; empty = /usr/share/datasets/fashion-mnist")
      .add("max_images", max_images, ">0: train on the first N images only")
      .add("canonical_share", canonical_share, "share of captions that use the canonical class name")
      .add("crop_scale_min", crop_scale_min, "< 1: train on random resized crops of this much area or more (1 = whole images)")
      .add("epochs", epochs, "passes over the training images")
      .add("batch_size", batch_size, "pairs per contrastive batch")
      .add("lr", lr, "AdamW peak learning rate")
      .add("weight_decay", weight_decay, "AdamW weight decay (matrices only)")
      .add("warmup_steps", warmup_steps, "linear warmup steps before the cosine decay")
      .add("seed", seed, "seed of initialisation, order and captions")
      .add("output", output, "where the model is written (safetensors, open_clip keys)");
}

PretrainOptions load_pretrain_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  PretrainOptions o;
  OptionSet set("pretrain");
  o.bind(set);
  std::vector<std::string> known;
  for (const auto& e : set.entries()) known.push_back(e.key);
  auto apply = [&](const std::string& key, const std::string& value, const std::string& where) {
    if (!set.find(key))
      throw Error(where + ": unknown key '" + key + "'; did you mean '" + nearest_key(key, known) + "'?");
    set.set(key, value);
  };
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open pretraining recipe");
  namespace po = boost::program_options;
  po::options_description none;
  for (const auto& opt : po::parse_config_file(in, none, true).options) {
    std::string value = opt.value.empty() ? "" : opt.value.front();
    apply(opt.string_key, value, path);
  }
  for (const auto& kv : overrides) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw Error("--set: expected key=value, got '" + kv + "'");
    apply(kv.substr(0, eq), kv.substr(eq + 1), "--set");
  }
  return o;
}

namespace {

// Synonyms and short descriptions per class; the canonical name is drawn separately.
const std::vector<std::vector<std::string>> kSynonyms = {
    {"tee", "t-shirt", "tee shirt", "short-sleeved top", "crew neck shirt", "tank top"},
    {"pants", "trousers", "jeans", "slacks", "pair of pants", "leggings"},
    {"sweater", "jumper", "knit sweater", "long-sleeved sweater", "pullover sweater", "sweatshirt"},
    {"gown", "frock", "sundress", "summer dress", "evening dress", "long dress"},
    {"jacket", "overcoat", "parka", "winter coat", "trench coat", "long-sleeved jacket"},
    {"flip-flop", "open-toed shoe", "summer sandal", "strappy sandal", "slipper", "beach sandal"},
    {"button-up shirt", "blouse", "collared shirt", "dress shirt", "flannel shirt", "polo shirt"},
    {"trainer", "running shoe", "athletic shoe", "canvas shoe", "tennis shoe", "sports shoe"},
    {"handbag", "purse", "tote", "shoulder bag", "backpack", "satchel"},
    {"boot", "bootie", "short boot", "leather boot", "heeled boot", "chelsea boot"}};
const std::vector<std::string> kCanonical = {"t-shirt/top", "trouser", "pullover", "dress", "coat",
                                             "sandal", "shirt", "sneaker", "bag", "ankle boot"};
const std::vector<std::string> kTemplates = {
    "a photo of a {}.", "a black and white photo of a {}.", "a grayscale picture of the {}.",
    "a small low resolution image of a {}.", "a {} on a dark background.", "product shot of a {}",
    "an item of clothing: a {}.", "a centered photo of a {}.", "{}", "a blurry photo of a {}.",
    "a photo of the {}, a fashion item.", "a catalog image showing a {}."};

}  // namespace

std::string fashion_caption(int label, double canonical_share, std::mt19937_64& rng) {
  const auto& syn = kSynonyms.at(static_cast<size_t>(label));
  const std::string name = seeded::uniform(rng) < canonical_share ? kCanonical[label] : syn[seeded::below(rng, syn.size())];
  const auto& t = kTemplates[seeded::below(rng, kTemplates.size())];
  const auto pos = t.find("{}");
  return t.substr(0, pos) + name + t.substr(pos + 2);
}

namespace {

ClipConfig pretrain_config(const PretrainOptions& o) {
  if (o.image_resolution % o.patch_size) throw Error("pretrain.patch_size must divide pretrain.image_resolution");
  if (o.vision_width % 64 || o.text_width % 64) throw Error("pretrain: vision_width and text_width must be multiples of 64");
  ClipConfig c;
  c.embed_dim = o.embed_dim;
  c.image_resolution = o.image_resolution;
  c.vision_vit = true;
  c.vision_layers = {o.vision_layers};
  c.vision_width = o.vision_width;
  c.vision_patch_size = o.patch_size;
  c.vision_heads = o.vision_width / 64;
  c.transformer_width = o.text_width;
  c.transformer_heads = o.text_width / 64;
  c.transformer_layers = o.text_layers;
  return c;
}

// CLIP's initialisation (clip/model.py initialize_parameters), scaled to the model.
void initialise(Clip& clip) {
  torch::NoGradGuard no_grad;
  const auto& c = clip->config();
  const double w = static_cast<double>(c.transformer_width), layers = static_cast<double>(c.transformer_layers);
  for (auto& item : clip->named_parameters(true)) {
    const auto& k = item.key();
    auto& t = item.value();
    const bool bias = k.size() > 4 && k.compare(k.size() - 4, 4, "bias") == 0;
    if (k == "logit_scale") t.fill_(std::log(1 / 0.07));
    else if (k.find("ln_") != std::string::npos) t.fill_(bias ? 0.0 : 1.0);
    else if (bias) t.zero_();
    else if (k == "token_embedding.weight") t.normal_(0, 0.02);
    else if (k == "positional_embedding") t.normal_(0, 0.01);
    else if (k == "text_projection") t.normal_(0, std::pow(w, -0.5));
    else if (k.find("c_proj") != std::string::npos || k.find("out_proj") != std::string::npos)
      t.normal_(0, std::pow(w, -0.5) * std::pow(2 * layers, -0.5));
    else if (t.dim() >= 2) t.normal_(0, std::pow(static_cast<double>(t.size(-1)), -0.5));
    else t.normal_(0, std::pow(static_cast<double>(t.size(0)), -0.5));
  }
}

struct TrainImages {
  std::vector<cv::Mat> rgb;  // uint8 RGB at the model's resolution
  torch::Tensor pixels;      // the same, normalised: [N,3,R,R]
  std::vector<int64_t> labels;
};

// All training images, resized once to the model's resolution.
TrainImages load_images(const PretrainOptions& o) {
  DataOptions d;
  d.dataset = "fashion_mnist";
  d.root = o.root;
  Dataset ds = open_dataset(d);
  const size_t n = o.max_images > 0 ? std::min<size_t>(o.max_images, ds.train.size()) : ds.train.size();
  TrainImages t;
  std::vector<torch::Tensor> px;
  for (size_t i = 0; i < n; ++i) {
    t.rgb.push_back(resize_crop(ds.load(ds.train[i].ref), o.image_resolution));
    px.push_back(normalize(t.rgb.back()));
    t.labels.push_back(ds.train[i].label);
  }
  t.pixels = torch::stack(px);
  return t;
}

// A batch of images: whole (one flip draw per batch), or cropped and flipped per image.
torch::Tensor batch_pixels(const TrainImages& t, const std::vector<int64_t>& idx, const PretrainOptions& o,
                           std::mt19937_64& rng) {
  if (o.crop_scale_min >= 1) {
    auto px = t.pixels.index_select(0, torch::tensor(idx));
    return seeded::uniform(rng) < 0.5 ? px.flip(-1) : px;  // flips keep every class's meaning
  }
  std::vector<torch::Tensor> views;
  for (auto i : idx)
    views.push_back(normalize(horizontal_flip(
        random_resized_crop(t.rgb[i], o.image_resolution, rng, {o.crop_scale_min, 1.0}), rng)));
  return torch::stack(views);
}

}  // namespace

double pretrain(const PretrainOptions& o, std::ostream& log) {
  torch::manual_seed(static_cast<uint64_t>(o.seed));
  Clip clip(pretrain_config(o));
  initialise(clip);
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& item : clip->named_parameters(true)) {
    item.value().set_requires_grad(true);
    (item.value().dim() >= 2 && item.key().find("embedding") == std::string::npos ? decay : no_decay).push_back(item.value());
  }
  torch::optim::AdamW opt({torch::optim::OptimizerParamGroup(decay), torch::optim::OptimizerParamGroup(no_decay)},
                          torch::optim::AdamWOptions(o.lr).betas({0.9, 0.98}).eps(1e-6).weight_decay(o.weight_decay));
  static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[1].options()).weight_decay(0);
  const TrainImages images = load_images(o);
  const auto& labels = images.labels;
  const int64_t n = images.pixels.size(0), steps_per_epoch = n / o.batch_size, total = steps_per_epoch * o.epochs;
  log << "pretraining " << clip->config().describe() << " on " << n << " images, " << total << " steps\n";
  Tokenizer tok;
  std::mt19937_64 rng(seeded::mix(o.seed, 7));
  double epoch_loss = 0;
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < o.epochs; ++epoch) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    seeded::shuffle(order, rng);
    Progress progress("pretrain epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o.epochs), steps_per_epoch, std::cerr);
    epoch_loss = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      const double lr = step < o.warmup_steps ? o.lr * (step + 1) / o.warmup_steps
                                              : o.lr * 0.5 * (1 + std::cos(M_PI * (step - o.warmup_steps) / std::max<int64_t>(1, total - o.warmup_steps)));
      for (auto& g : opt.param_groups()) g.options().set_lr(lr);
      std::vector<int64_t> idx(order.begin() + b * o.batch_size, order.begin() + (b + 1) * o.batch_size);
      std::vector<std::string> captions;
      for (auto i : idx) captions.push_back(fashion_caption(static_cast<int>(labels[i]), o.canonical_share, rng));
      auto img = clip->encode_image(batch_pixels(images, idx, o, rng));
      auto txt = clip->encode_text(tok.tokenize(captions, clip->config().context_length, true));
      auto logits = clip->logits(img, txt);
      auto target = torch::arange(static_cast<int64_t>(idx.size()));
      auto loss = (torch::cross_entropy_loss(logits, target) + torch::cross_entropy_loss(logits.t(), target)) / 2;
      opt.zero_grad();
      loss.backward();
      opt.step();
      {
        torch::NoGradGuard no_grad;  // CLIP clamps the temperature at 100
        clip->logit_scale().clamp_(0, std::log(100.0));
      }
      epoch_loss += loss.item<double>();
      progress.update(b + 1, epoch_loss / (b + 1), lr, static_cast<int64_t>(idx.size()));
    }
    progress.finish();
    epoch_loss /= std::max<int64_t>(1, steps_per_epoch);
    log << "epoch " << epoch + 1 << ": mean loss " << epoch_loss << "\n";
  }
  for (auto& p : clip->parameters()) p.set_requires_grad(false);
  save_clip(clip, o.output, /*half=*/true);
  log << "wrote " << o.output << "\n";
  return epoch_loss;
}

}  // namespace vlmadapt
