// The Hugging Face config.json reader (parse_hf_config in src/backbone/hf_keys.cpp) and the
// architecture checks its values then meet (validate_clip_config), on arbitrary text.
#include <nlohmann/json.hpp>

#include "backbone/hf_keys.h"
#include "fuzz_util.h"

using namespace vlmadapt;

namespace {

// In a real load the widths come from the weights' shapes. Taking them from the config's
// hidden_size when it holds an integer lets the fuzzer try heads against any width too.
void widths_from_config(const std::string& text, ClipConfig& c) {
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto width = [&](const char* tower, int64_t& field) {
    if (j.is_object() && j.contains(tower) && j[tower].is_object() && j[tower].contains("hidden_size") &&
        j[tower]["hidden_size"].is_number_integer())
      field = j[tower]["hidden_size"].get<int64_t>();
  };
  width("text_config", c.transformer_width);
  width("vision_config", c.vision_width);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = fuzz::bytes(data, size);
  fuzz::expect_only_errors([&] {
    const HfConfig hf = parse_hf_config(text, "config.json");
    ClipConfig c = ClipConfig::named("ViT-B/16");
    widths_from_config(text, c);
    apply_hf_config(hf, c);
    validate_clip_config(c, "config.json");
    // What building the modules divides by (head_dim = width / heads).
    fuzz::require(c.transformer_heads > 0 && c.transformer_width % c.transformer_heads == 0 &&
                      c.vision_heads > 0 && c.vision_width % c.vision_heads == 0,
                  "accepted heads are positive and divide the widths");
  });
  return 0;
}
