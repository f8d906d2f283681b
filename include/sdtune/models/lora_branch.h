#pragma once
// The low-rank branch that LoRA-capable layers (LoraLinear, LoraConv2d) may carry, PEFT's LoRA:
//   y = layer(x) + (alpha / r) · B(A(dropout(x)))
// A and B belong to the branch, not to the layer's registered parameters: the model's weights stay
// frozen and savable as they are while a trainer optimizes the branches it attached (or a LoRA
// file's are applied without merging them).
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace sdtune::models {

struct LoraBranch {
  // Linear: A [r, in], B [out, r]. Conv2d: A [r, in, kh, kw] (the layer's kernel, stride and
  // padding), B [out, r, 1, 1].
  at::Tensor down, up;
  double scale = 1.0;    // alpha / r
  double dropout = 0.0;  // on the branch's input, in training mode only
};

// The branch slot of a LoRA-capable layer; nullptr for any other module.
std::shared_ptr<LoraBranch>* lora_slot(torch::nn::Module& module);

// The module's parameters and the low-rank factors of the branches attached below it: everything
// its forward reads that may need a gradient (what a gradient checkpoint must link its output to).
std::vector<at::Tensor> parameters_and_adapters(const torch::nn::Module& module);

}  // namespace sdtune::models
