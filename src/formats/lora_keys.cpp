#include "sdtune/formats/lora_keys.h"

#include <cstring>
#include <iterator>

#include "sdtune/error.h"

namespace sdtune::formats {
namespace {

struct Suffix {
  const char* text;
  const char* part;
};
const Suffix kKohya[] = {
    {".lora_down.weight", "down"}, {".lora_up.weight", "up"}, {".alpha", "alpha"}};
// The first of each part is what we write.
const Suffix kDiffusers[] = {{".lora_A.weight", "down"},
                             {".lora_B.weight", "up"},
                             {".lora_linear_layer.down.weight", "down"},
                             {".lora_linear_layer.up.weight", "up"},
                             {".lora.down.weight", "down"},
                             {".lora.up.weight", "up"},
                             {".alpha", "alpha"}};

// diffusers' attention processors (0.13-0.16) named the LoRA of an attention's projections after
// the processor: "<attention>.processor.to_q_lora.down.weight", under "unet." (or no prefix, in
// the first files) or "text_encoder." (whose projections are q_proj, ..., out_proj). No alpha.
std::optional<LoraKey> parse_attention_processor_key(const std::string& key) {
  static const Suffix kParts[] = {{"_lora.down.weight", "down"}, {"_lora.up.weight", "up"}};
  static const char* const kProjections[][3] = {{"to_q", "to_q", "q_proj"},
                                                {"to_k", "to_k", "k_proj"},
                                                {"to_v", "to_v", "v_proj"},
                                                {"to_out", "to_out.0", "out_proj"}};
  for (const auto& s : kParts) {
    if (!key.ends_with(s.text)) continue;
    const std::string head = key.substr(0, key.size() - std::strlen(s.text));
    const size_t dot = head.rfind('.');
    if (dot == std::string::npos || dot == 0) return std::nullopt;
    std::string path = head.substr(0, dot);
    const std::string projection = head.substr(dot + 1);
    if (path.ends_with(".processor")) path.resize(path.size() - std::strlen(".processor"));
    std::string component = "unet";
    if (path.starts_with("text_encoder.")) {
      component = "text_encoder";
      path.erase(0, std::strlen("text_encoder."));
    } else if (path.starts_with("unet.")) {
      path.erase(0, std::strlen("unet."));
    }
    for (const auto& p : kProjections)
      if (projection == p[0] && !path.empty())
        return LoraKey{LoraFormat::Diffusers, component,
                       path + "." + (component == "unet" ? p[1] : p[2]), s.part};
    return std::nullopt;
  }
  return std::nullopt;
}

// Whether a key that starts with `prefix` and ends with `suffix` holds a layer name between them:
// in "unet.lora_A.weight" the two overlap, and "unet..alpha" names no layer.
bool names_a_layer(const std::string& key, const std::string& prefix, const char* suffix) {
  return key.size() > prefix.size() + std::strlen(suffix);
}

}  // namespace

std::optional<LoraKey> parse_lora_key(const std::string& key) {
  // kohya: SD 1.x/2.x files name the text encoder lora_te_, SDXL files its two lora_te1_ and
  // lora_te2_.
  static const std::pair<const char*, const char*> kKohyaPrefixes[] = {
      {"lora_unet_", "unet"},
      {"lora_te_", "text_encoder"},
      {"lora_te1_", "text_encoder"},
      {"lora_te2_", "text_encoder_2"}};
  for (const auto& [prefix, component] : kKohyaPrefixes) {
    if (!key.starts_with(prefix)) continue;
    for (const auto& s : kKohya) {
      if (!key.ends_with(s.text)) continue;
      if (!names_a_layer(key, prefix, s.text)) return std::nullopt;
      return LoraKey{LoraFormat::Kohya, component,
                     key.substr(0, key.size() - std::string(s.text).size()),  // keeps lora_unet_
                     s.part};
    }
  }
  if (auto old = parse_attention_processor_key(key)) return old;
  // PEFT's own adapter files (PeftModel.save_pretrained of one model) name no component; the text
  // encoder's module paths are transformers' "text_model.…", the UNet has none such.
  const std::string peft = "base_model.model.";
  if (key.starts_with(peft)) {
    const std::string rest = key.substr(peft.size());
    const std::string component = rest.starts_with("text_model.") ? "text_encoder" : "unet";
    for (const auto& s : kDiffusers)
      if (rest.ends_with(s.text) && rest.size() > std::strlen(s.text))
        return LoraKey{LoraFormat::Diffusers, component,
                       rest.substr(0, rest.size() - std::strlen(s.text)), s.part};
    return std::nullopt;
  }
  for (const std::string prefix : {"unet.", "text_encoder.", "text_encoder_2."}) {
    if (!key.starts_with(prefix)) continue;
    for (const auto& s : kDiffusers) {
      if (!key.ends_with(s.text)) continue;
      if (!names_a_layer(key, prefix, s.text)) return std::nullopt;
      return LoraKey{
          LoraFormat::Diffusers, prefix.substr(0, prefix.size() - 1),
          key.substr(prefix.size(), key.size() - prefix.size() - std::string(s.text).size()),
          s.part};
    }
  }
  return std::nullopt;
}

std::string kohya_layer_name(const std::string& component, const std::string& module, bool sdxl) {
  std::string name = component == "unet"             ? "lora_unet_"
                     : component == "text_encoder_2" ? "lora_te2_"
                     : sdxl                          ? "lora_te1_"
                                                     : "lora_te_";
  for (char c : module) name.push_back(c == '.' ? '_' : c);
  return name;
}

std::string lora_key(LoraFormat format, const std::string& component, const std::string& module,
                     const std::string& part, bool sdxl) {
  const bool kohya = format == LoraFormat::Kohya;
  const Suffix* begin = kohya ? std::begin(kKohya) : std::begin(kDiffusers);
  const Suffix* end = kohya ? std::end(kKohya) : std::end(kDiffusers);
  for (const Suffix* s = begin; s != end; ++s)
    if (part == s->part)
      return (kohya ? kohya_layer_name(component, module, sdxl) : component + "." + module) +
             s->text;
  throw Error("no LoRA key for part '" + part + "'");
}

}  // namespace sdtune::formats
