// libFuzzer target: arbitrary bytes as a tensor name of a LoRA file, read by parse_lora_key, and
// the same bytes as a module path given to kohya_layer_name and lora_key. A key that parses must
// be exactly its layout's prefix, a layer and one suffix of its part, and the key lora_key writes
// for a layer must parse back to that layer.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/formats/lora_keys.h"

namespace {

using sdtune::formats::LoraFormat;
using sdtune::formats::LoraKey;
using sdtune::fuzz::check;

// Every suffix each layout reads, with its part (src/formats/lora_keys.cpp).
struct Suffix {
  const char* text;
  const char* part;
};
constexpr Suffix kKohya[] = {
    {".lora_down.weight", "down"}, {".lora_up.weight", "up"}, {".alpha", "alpha"}};
constexpr Suffix kDiffusers[] = {{".lora_A.weight", "down"},
                                 {".lora_B.weight", "up"},
                                 {".lora_linear_layer.down.weight", "down"},
                                 {".lora_linear_layer.up.weight", "up"},
                                 {".lora.down.weight", "down"},
                                 {".lora.up.weight", "up"},
                                 {".alpha", "alpha"}};

// Whether `key` is `head` + a layer + a suffix of `part`, the three not overlapping.
template <size_t N>
bool composed_of(const std::string& key, const std::string& head, const Suffix (&suffixes)[N],
                 const std::string& part) {
  for (const auto& s : suffixes)
    if (s.part == part && key == head + s.text) return true;
  return false;
}

void check_parsed(const std::string& key, const LoraKey& k) {
  check(k.component == "unet" || k.component == "text_encoder", "unknown component", key);
  check(k.part == "down" || k.part == "up" || k.part == "alpha", "unknown part", key);
  if (k.format == LoraFormat::Kohya) {
    // kohya's name is the whole layer name, prefix included.
    const std::string prefix = k.component == "unet" ? "lora_unet_" : "lora_te_";
    check(k.name.starts_with(prefix), "kohya name without its prefix", key);
    check(k.name != prefix, "empty layer name", key);
    check(composed_of(key, k.name, kKohya, k.part), "kohya key is not name + suffix", key);
  } else {
    check(composed_of(key, k.component + "." + k.name, kDiffusers, k.part),
          "diffusers key is not component.name + suffix", key);
    check(!k.name.empty(), "empty layer name", key);
  }
}

void check_written(LoraFormat format, const std::string& component, const std::string& module) {
  for (const char* part : {"down", "up", "alpha"}) {
    const std::string key = sdtune::formats::lora_key(format, component, module, part);
    const std::optional<LoraKey> k = sdtune::formats::parse_lora_key(key);
    check(k.has_value(), "a written key does not parse", key);
    check(k->format == format && k->component == component && k->part == part,
          "a written key parses to another layout, component or part", key);
    const std::string name =
        format == LoraFormat::Kohya ? sdtune::formats::kohya_layer_name(component, module) : module;
    check(k->name == name, "a written key parses to another layer", key);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (const std::optional<LoraKey> k = sdtune::formats::parse_lora_key(text))
    check_parsed(text, *k);

  // Module paths as the models name them: non-empty, '.'-separated; a path that ends in one of
  // the suffixes would be read back as a shorter layer, which no model has.
  if (!text.empty()) {
    for (const char* component : {"unet", "text_encoder"}) {
      check_written(LoraFormat::Diffusers, component, text);
      check_written(LoraFormat::Kohya, component, text);
    }
  }
  try {
    sdtune::formats::lora_key(LoraFormat::Kohya, "unet", "mid_block.attentions.0", text);
  } catch (const sdtune::Error&) {
    // the expected outcome for a part other than down, up or alpha
  }
  return 0;
}
