#pragma once
// Trainable LoRA branches on a model's LoRA-capable layers (models::LoraLinear): what LoRA training
// optimizes while the model's own weights stay frozen, and what it saves as a LoRA file.
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>

#include "sdtune/lora/lora.h"
#include "sdtune/models/lora_linear.h"

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

// Attaches a fresh branch to every LoraLinear of `model` whose path ends with a target, as PEFT
// initializes it: A ~ U(−1/√in, 1/√in) (kaiming-uniform with a = √5) drawn from `gen` in module
// order, B = 0 (so the model's outputs are unchanged until training moves B); float32 on the
// layer's device, requiring grad. An Error when rank < 1 or no layer matches.
std::vector<Adapter> attach_adapters(torch::nn::Module& model, const AdapterOptions& options,
                                     at::Generator& gen);

// Removes every branch from `model`'s LoraLinear layers.
void detach_adapters(torch::nn::Module& model);

// The adapters as LoRA layers of `component` ("unet", "text_encoder"), for write_lora_file.
std::vector<LoraLayer> adapter_layers(const std::string& component,
                                      const std::vector<Adapter>& adapters, double alpha);

}  // namespace sdtune::lora
