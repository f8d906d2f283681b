#pragma once
// LoRA files: low-rank updates ΔW = (alpha / rank) · up · down of a pipeline's Linear and Conv2d
// weights, in the two layouts users exchange (their key names: formats/lora_keys.h): diffusers/
// PEFT, with rank and alpha in the safetensors metadata "lora_adapter_metadata" (as diffusers
// writes it), and kohya's, with an ".alpha" tensor per layer.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "sdtune/formats/lora_keys.h"

namespace sdtune::lora {

using Format = formats::LoraFormat;

// One adapted weight, named as our modules are ("down_blocks.0.attentions.0.transformer_blocks.0.
// attn1.to_q", "text_model.encoder.layers.0.self_attn.q_proj").
struct LoraLayer {
  std::string component;  // "unet" | "text_encoder"
  std::string module;
  at::Tensor down, up;  // [r, in] / [out, r]; convolutions [r, in, kh, kw] / [out, r, 1, 1]
  double alpha = 0;     // the update is scaled by alpha / r
  int64_t rank() const { return down.size(0); }
};

// What a file holds, before its names are matched to a model: kohya names cannot be turned back
// into module paths without the model (module names contain '_').
struct LoraEntry {
  std::string component;  // "unet" | "text_encoder" | "text_encoder_2"
  std::string name;       // the file's layer name without component prefix and suffix
  at::Tensor down, up;
  double alpha = 0;
};
struct LoraFile {
  Format format = Format::Diffusers;
  std::vector<LoraEntry> entries;
};

// Reads either layout. Errors name the file: missing, not safetensors, no LoRA keys, a down
// without its up (or the reverse), or ranks that disagree.
LoraFile read_lora_file(const std::filesystem::path& path);

// Matches the file's layers to the modules of `models` ("unet", "text_encoder"). Layers that match
// no Linear/Conv2d weight of the right shape are an Error naming them (a LoRA for another
// architecture), with the file as source. kohya's UNet layers may be named by diffusers' module
// paths or by the single file's (SDXL files: "lora_unet_input_blocks_4_1_...").
std::vector<LoraLayer> resolve(const LoraFile& file,
                               const std::map<std::string, const torch::nn::Module*>& models,
                               const std::string& source);

// W += scale · (alpha / r) · up · down for each layer of `component`, in W's dtype (the update is
// computed in float32). The merged model is what diffusers computes with the adapter loaded
// (scale = its adapter weight / lora_scale).
void merge(torch::nn::Module& model, const std::string& component,
           const std::vector<LoraLayer>& layers, double scale);

// Writes the layers in either layout (atomically). Diffusers: one rank and alpha per component in
// the metadata, or PEFT's rank_pattern/alpha_pattern when layers differ. Kohya, given an SDXL
// `unet` (the model the layers belong to): its layers under their single-file names
// ("lora_unet_input_blocks_4_1_..."), as sd-scripts writes SDXL LoRAs; SD 1.x/2.x files keep
// diffusers' module names ("lora_unet_down_blocks_0_..."), as sd-scripts writes those.
void write_lora_file(const std::filesystem::path& path, const std::vector<LoraLayer>& layers,
                     Format format, const torch::nn::Module* unet = nullptr);

// "FILE" or "FILE:SCALE" (the last ':' followed by a number) -> (FILE, SCALE), scale 1 by default.
std::pair<std::filesystem::path, double> parse_lora_argument(const std::string& arg);

// `--lora FILE[:SCALE]` (repeatable) on loaded models: each file is read, its layers for the given
// components ("unet", "text_encoder"; others are ignored) matched and merged with its scale.
void apply_lora_arguments(const std::vector<std::string>& args,
                          const std::map<std::string, torch::nn::Module*>& models);

}  // namespace sdtune::lora
