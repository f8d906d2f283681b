#pragma once
// Which of PyTorch's scaled_dot_product_attention kernels the models' attention prefers on a GPU:
// "auto" (PyTorch's own order), or "flash", "cudnn", "efficient" or "math" first. The others stay
// behind it in PyTorch's order, so a shape or dtype the preferred kernel cannot take still runs.
// Process-wide (PyTorch keeps the order in its global context). The CPU has one kernel.
//
// PyTorch's own order depends on its version and the card: the torch here puts cuDNN's kernel
// after the math one (so it never runs), while newer ones move cuDNN first on Hopper and
// Blackwell with cuDNN >= 9.15 — at their first attention call on the GPU, overwriting any order
// set before it. So on a CUDA `device` one tiny attention call is made first.
#include <string>

#include <c10/core/Device.h>

namespace sdtune::models {

// An Error names the choices for anything else.
void prefer_attention_backend(const std::string& name, c10::Device device = c10::kCPU);

// PyTorch's order now, by name: e.g. "flash,efficient,math,cudnn,overrideable".
std::string attention_backend_order();

}  // namespace sdtune::models
