// vlmadapt info | classify | embed: the backbone on its own.
#include <iomanip>
#include <ostream>

#include <nlohmann/json.hpp>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/adapt/prompts.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/vlmadapt.h>

#include "cli/args.h"
#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

int info(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  po::options_description o("info options");
  o.add_options()("model", po::value<std::string>()->required(), "checkpoint (file or Hugging Face folder)");
  auto p = parse_args(args, "vlmadapt info MODEL", o, "model", out);
  if (p.help) return 0;
  const auto path = resolve_checkpoint(p.vars["model"].as<std::string>());
  Checkpoint ck = read_checkpoint(path);
  int64_t params = 0;
  for (const auto& [k, v] : ck.state_dict)
    if (k.find("running_") == std::string::npos && k.find("num_batches") == std::string::npos) params += v.numel();
  out << "file:         " << path << "\n"
      << "format:       " << to_string(ck.format) << "\n"
      << "architecture: " << ck.config.describe() << "\n"
      << "parameters:   " << params << "\n";
  return 0;
}

std::vector<std::string> class_list(const po::variables_map& v) {
  if (v.count("classes")) return split_list(v["classes"].as<std::string>());
  if (v.count("classes-file")) return split_list(read_file(v["classes-file"].as<std::string>(), uint64_t(64) << 20, "a class-names file"), '\n');
  throw Error("give the class names with --classes a,b,c or --classes-file FILE");
}

torch::Tensor preprocess_all(const std::vector<std::string>& images, int n_px) {
  std::vector<torch::Tensor> px;
  for (const auto& path : images) px.push_back(preprocess(path, n_px));
  return torch::stack(px);
}

int classify(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  po::options_description o("classify options");
  o.add_options()("model", po::value<std::string>()->default_value("default"), "checkpoint")
      ("classes", po::value<std::string>(), "class names, comma-separated")
      ("classes-file", po::value<std::string>(), "class names, one per line")
      ("template", po::value<std::string>()->default_value("a photo of a {}."), "prompt template ({} = class)")
      ("top-k", po::value<int>()->default_value(5), "classes to print per image")
      ("json", po::bool_switch(), "one JSON line per image")
      ("images", po::value<std::vector<std::string>>()->multitoken(), "image files");
  auto p = parse_args(args, "vlmadapt classify [--model M] --classes a,b,c | --classes-file F [--template T] IMAGE...",
                      o, "images", out);
  if (p.help) return 0;
  if (!p.vars.count("images")) throw Error("no images given");
  const auto classes = class_list(p.vars);
  if (classes.empty()) throw Error("the class list is empty");
  Clip clip = load_clip(resolve_checkpoint(p.vars["model"].as<std::string>()));
  torch::NoGradGuard no_grad;
  auto classifier = class_text_features(clip, Tokenizer(), classes, {p.vars["template"].as<std::string>()});
  const auto images = p.vars["images"].as<std::vector<std::string>>();
  auto probs = torch::softmax(cosine_logits(clip, clip->encode_image(preprocess_all(images, clip->image_resolution())), classifier), -1);
  const int64_t k = std::min<int64_t>(p.vars["top-k"].as<int>(), static_cast<int64_t>(classes.size()));
  auto [score, index] = probs.topk(k, -1);
  for (size_t i = 0; i < images.size(); ++i) {
    nlohmann::json top = nlohmann::json::array();
    for (int64_t j = 0; j < k; ++j)
      top.push_back({{"class", classes[index[i][j].item<int64_t>()]}, {"score", score[i][j].item<double>()}});
    if (p.vars["json"].as<bool>()) {
      out << nlohmann::json{{"image", images[i]}, {"top", top}}.dump() << "\n";
      continue;
    }
    out << images[i] << "\n";
    for (const auto& t : top)
      out << "  " << std::fixed << std::setprecision(4) << t["score"].get<double>() << "  " << t["class"].get<std::string>() << "\n";
  }
  return 0;
}

int embed(const std::vector<std::string>& args, std::ostream& out, std::ostream&) {
  po::options_description o("embed options");
  o.add_options()("model", po::value<std::string>()->default_value("default"), "checkpoint")
      ("texts", po::value<std::string>(), "texts to embed, separated by '|'")
      ("output,o", po::value<std::string>()->required(), "output .safetensors file")
      ("normalize", po::bool_switch(), "L2-normalise the features")
      ("images", po::value<std::vector<std::string>>()->multitoken(), "image files");
  auto p = parse_args(args, "vlmadapt embed [--model M] -o OUT.safetensors (--texts 'a|b' | IMAGE...)", o, "images", out);
  if (p.help) return 0;
  Clip clip = load_clip(resolve_checkpoint(p.vars["model"].as<std::string>()));
  torch::NoGradGuard no_grad;
  TensorMap result;
  auto finish = [&](torch::Tensor f) { return p.vars["normalize"].as<bool>() ? f / f.norm(2, -1, true) : f; };
  if (p.vars.count("texts")) {
    auto texts = split_list(p.vars["texts"].as<std::string>(), '|');
    result["text_features"] = finish(clip->encode_text(Tokenizer().tokenize(texts, clip->config().context_length)));
  }
  if (p.vars.count("images"))
    result["image_features"] = finish(clip->encode_image(preprocess_all(p.vars["images"].as<std::vector<std::string>>(), clip->image_resolution())));
  if (result.empty()) throw Error("nothing to embed: give --texts or image files");
  const auto path = p.vars["output"].as<std::string>();
  write_safetensors(path, result);
  for (const auto& [k, v] : result) out << k << " " << c10::str(v.sizes()) << " -> " << path << "\n";
  return 0;
}

const bool registered = add_command({"info", "format, architecture and parameter count of a checkpoint", info}) &&
                        add_command({"classify", "zero-shot classification of image files", classify}) &&
                        add_command({"embed", "image or text features to a safetensors file", embed});

}  // namespace
}  // namespace vlmadapt::cli
