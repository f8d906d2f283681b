#pragma once
// Gradient checkpointing (activation recomputation, Chen et al. 2016): a function of some tensors
// runs without keeping its intermediate activations, and backward runs it again to get them. It
// trades one more forward pass of that part for its activation memory, as diffusers'
// enable_gradient_checkpointing does per resnet and per attention block.
#include <functional>
#include <vector>

#include <ATen/ATen.h>

namespace sdtune::models {

using CheckpointedFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

// fn(inputs), differentiable with respect to the inputs and to `params`, the parameters fn uses
// (a module's parameters()): passing them lets their gradients flow even when no input needs
// one (a frozen part before a trained one). The forward pass keeps only the inputs; backward
// recomputes fn (which must be deterministic: SD's dropout is 0) with grad on and differentiates
// the recomputed graph. Every input must be defined.
at::Tensor checkpoint(CheckpointedFn fn, const std::vector<at::Tensor>& inputs,
                      const std::vector<at::Tensor>& params);

}  // namespace sdtune::models
