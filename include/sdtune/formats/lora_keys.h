#pragma once
// Key names of LoRA files, in the two layouts users exchange:
//  - diffusers/PEFT (`pipe.load_lora_weights`, pytorch_lora_weights.safetensors):
//    "unet.<module>.lora_A.weight" (down) / ".lora_B.weight" (up), "text_encoder.<module>...";
//    the older "<module>.lora_linear_layer.down/up.weight" and "<module>.lora.down/up.weight"
//    spellings are read too, and diffusers' attention processors' (0.13-0.16)
//    "<attention>.processor.to_q_lora.down.weight" (with or without "unet."), and PEFT's own
//    adapter files, "base_model.model.<module>.lora_A.weight" (one model per file);
//  - kohya (A1111, ComfyUI, sd-scripts): "lora_unet_<module with _ for .>.lora_down.weight",
//    ".lora_up.weight", ".alpha"; "lora_te_<module>" for the text encoder.
#include <optional>
#include <string>

namespace sdtune::formats {

enum class LoraFormat { Diffusers, Kohya };

// What a key of a LoRA file is.
struct LoraKey {
  LoraFormat format;
  std::string component;  // "unet" | "text_encoder" | "text_encoder_2" (SDXL)
  // The layer: diffusers' module path ("down_blocks.0...to_q"), or kohya's full layer name
  // ("lora_unet_down_blocks_0_..._to_q"), which cannot be turned back into a path without the
  // model (module names contain '_').
  std::string name;
  std::string part;  // "down", "up" or "alpha"
};

// The key's meaning; nullopt when it is not a LoRA key of a layout we know.
std::optional<LoraKey> parse_lora_key(const std::string& key);

// kohya's layer name of a module path: "lora_unet_", "lora_te_" (with `sdxl`: "lora_te1_") or
// "lora_te2_" + the path with '.' -> '_'.
std::string kohya_layer_name(const std::string& component, const std::string& module,
                             bool sdxl = false);

// The key that holds `part` ("down", "up", "alpha") of the layer at `module` of `component`.
std::string lora_key(LoraFormat format, const std::string& component, const std::string& module,
                     const std::string& part, bool sdxl = false);

}  // namespace sdtune::formats
