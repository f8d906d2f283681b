#pragma once
// Trainable LoRA branches on a model's LoRA-capable layers (models::LoraLinear, LoraConv2d): what
// LoRA training optimizes while the model's own weights stay frozen, and what it saves as a LoRA
// file.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>

#include "sdtune/io/state_dict.h"
#include "sdtune/lora/lora.h"
#include "sdtune/models/lora_branch.h"

namespace sdtune::lora {

struct AdapterOptions {
  int64_t rank = 4;
  double alpha = 4;  // the update is scaled by alpha / rank
  double dropout = 0;
  // Module-path suffixes, as PEFT's target_modules: {"to_q", "to_k", "to_v", "to_out.0"}.
  std::vector<std::string> targets;
};

struct Adapter {
  std::string module;  // our module path
  std::shared_ptr<models::LoraBranch> branch;
};

// Attaches a fresh branch to every LoRA-capable layer of `model` whose path ends with a target, as
// PEFT initializes it: A ~ U(−1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5; fan_in = in, or
// in·kh·kw for a convolution) drawn from `gen` layer by layer in the sorted order of the module
// paths, B = 0 (so the model's outputs are unchanged until training moves B); float32 on the
// layer's device, requiring grad. An Error when rank < 1 or a target matches no layer.
std::vector<Adapter> attach_adapters(torch::nn::Module& model, const AdapterOptions& options,
                                     at::Generator& gen);

// Removes every branch from `model`'s LoRA-capable layers.
void detach_adapters(torch::nn::Module& model);

// The adapters as LoRA layers of `component` ("unet", "text_encoder"), for write_lora_file.
std::vector<LoraLayer> adapter_layers(const std::string& component,
                                      const std::vector<Adapter>& adapters, double alpha);

// Adapters of several components, by component name ("unet", "text_encoder").
using AdapterSet = std::map<std::string, std::vector<Adapter>>;

// Their factors as "<component>.<module>.down" / ".up" (CPU copies): what a training checkpoint
// keeps to resume bit for bit.
io::StateDict adapters_state_dict(const AdapterSet& adapters);

// Copies such a state dict into the adapters; an Error naming `source` lists missing, unexpected
// and wrongly shaped keys.
void load_adapters_state_dict(const AdapterSet& adapters, const io::StateDict& state,
                              const std::string& source);

}  // namespace sdtune::lora
