#pragma once
// Which of PyTorch's scaled_dot_product_attention kernels the models' attention prefers on a GPU:
// "auto" (PyTorch's own order), or "flash", "cudnn", "efficient" or "math" first. The others stay
// behind it in PyTorch's order, so a shape or dtype the preferred kernel cannot take still runs.
// Process-wide (PyTorch keeps the order in its global context). The CPU has one kernel.
#include <string>

namespace sdtune::models {

// An Error names the choices for anything else.
void prefer_attention_backend(const std::string& name);

// PyTorch's order now, by name: e.g. "flash,efficient,math,cudnn,overrideable".
std::string attention_backend_order();

}  // namespace sdtune::models
