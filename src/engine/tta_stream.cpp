// vlmadapt tta --stream: test-time adaptation on images as they come (run.h).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <istream>
#include <ostream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/data/image.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/engine/dispatch.h>
#include <vlmadapt/engine/distributed.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/run_context.h>
#include <vlmadapt/adapt/tta.h>

#include "core/seeded.h"

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Image files of a folder, recursively, in path order.
std::vector<std::string> images_under(const fs::path& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && is_image_path(e.path().string())) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

// One prediction as a JSON line: the top-k classes with their probabilities.
json prediction(const std::string& file, const torch::Tensor& logits, const std::vector<std::string>& classnames,
                int64_t k, double seconds) {
  auto probs = torch::softmax(logits.reshape(-1).to(torch::kFloat), 0);
  auto [scores, labels] = probs.topk(std::min<int64_t>(k, probs.size(0)));
  json top = json::array();
  for (int64_t i = 0; i < labels.size(0); ++i) {
    const int64_t label = labels[i].item<int64_t>();
    top.push_back({{"class", classnames[label]}, {"label", label}, {"score", scores[i].item<double>()}});
  }
  return {{"file", file}, {"top", top}, {"seconds", seconds}};
}

// One JSON line. Paths are bytes, not always UTF-8: invalid sequences print as U+FFFD
// rather than stopping the stream.
std::string line(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// What a state file must match: the method, the model and the class set it was made on.
std::map<std::string, std::string> state_identity(const RunContext& c) {
  std::string names;
  for (const auto& n : c.task.classnames) names += n + "\n";
  return {{"format", "vlmadapt stream state 1"},
          {"method", c.recipe.method},
          {"model", checkpoint_id(c.checkpoint)},
          {"classes", std::to_string(c.task.classnames.size()) + " classes, names " +
                          std::to_string(seeded::hash_text(names))}};
}

// Carries an online method's state from one stream to the next: read before the first
// image when the file exists (checked against the method, model and classes), written
// through a temporary file and a rename when the stream ends. A bad file is an error
// before anything is read from the stream, and is left as it was.
void load_stream_state(RunContext& c, const std::string& file) {
  if (c.method->contract().adaptation != Adaptation::Online)
    throw Error("--state " + file + ": method " + c.recipe.method + " is " + to_string(c.method->contract().adaptation) +
                "; only online methods carry a state from image to image");
  if (!fs::exists(file)) return;
  const auto found = read_safetensors_metadata(file);
  for (const auto& [key, expected] : state_identity(c)) {
    auto it = found.find(key);
    const std::string got = it == found.end() ? "(none)" : it->second;
    if (got != expected)
      throw Error(file + ": not a state of this stream: its " + key + " is '" + got + "', expected '" + expected +
                  "' (delete the file to start from an empty state)");
  }
  c.method->load_state(read_safetensors(file), file);
}

}  // namespace

int stream_predictions(const Recipe& recipe, const std::vector<std::string>& inputs, std::istream& in,
                       std::ostream& out, std::ostream& log, const std::string& state_file) {
  if (inputs.empty()) throw Error("--stream: give image files, folders, or - to read paths from stdin");
  // One process reads the stream and answers each image in turn; N processes would each
  // answer all of it.
  if (const auto env = dist::env_from_environment(); env.world_size > 1)
    throw Error("--stream: a stream is read by one process (WORLD_SIZE=" + std::to_string(env.world_size) +
                "); run it without vlmadapt launch, or shard a dataset split with vlmadapt tta --recipe");
  RunContext c = open_class_context(recipe);
  if (!state_file.empty()) load_stream_state(c, state_file);
  const TtaViewOptions v = c.view_options();
  const bool augmix = uses_augmix(v.augmix, recipe.data.dataset);
  std::unique_ptr<ExtraViews> extra = v.extra_views.empty() ? nullptr : std::make_unique<ExtraViews>(v.extra_views);
  log << "streaming " << recipe.method << " over " << c.task.classnames.size() << " classes, " << v.views
      << " views per image\n";

  int failed = 0;
  ImageStream stream(*c.method, c.clip);
  auto handle = [&](const std::string& file) {
    const auto start = std::chrono::steady_clock::now();
    try {
      // Extra views are found by the file's stem beside the folder given.
      const auto& extras = extra ? extra->of(fs::path(file).filename().string()) : std::vector<std::string>{};
      // Views are seeded by the path, so an image gets the same views wherever it comes.
      auto views = tta_views(decode_image(file), extras, v, augmix, seeded::hash_text(file)).to(c.device());
      auto logits = stream.predict(views);
      if (!torch::isfinite(logits).all().item<bool>())
        throw Error(file + ": the method's scores are not finite (a diverged test-time step?)");
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      out << line(prediction(file, logits.cpu(), c.task.classnames, 5, seconds)) << std::endl;
    } catch (const std::exception& e) {
      ++failed;
      out << line(json{{"file", file}, {"error", e.what()}}) << std::endl;
    }
  };
  for (const auto& input : inputs) {
    if (input == "-") {
      for (std::string line; std::getline(in, line);)
        if (!line.empty()) handle(line);
    } else if (fs::is_directory(input)) {
      for (const auto& f : images_under(input)) handle(f);
    } else {
      handle(input);
    }
  }
  stream.finish();
  if (!state_file.empty()) write_safetensors(state_file, c.method->state(), state_identity(c));
  return failed;
}

}  // namespace vlmadapt
