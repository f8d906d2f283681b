#pragma once
// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_, which the diffusers scripts
// call through accelerate): g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)) with ‖g‖₂ the 2-norm over
// all gradients together.
#include <vector>

#include <ATen/ATen.h>

namespace sdtune::train {

// The global 2-norm of the gradients of `params` (those that have one), computed as torch does
// (per-tensor norms, then the norm of those). With max_norm > 0 the gradients are scaled in
// place as above; a non-finite norm leaves them as they are (the step is skipped anyway).
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace sdtune::train
