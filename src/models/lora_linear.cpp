#include "sdtune/models/lora_linear.h"

#include <ATen/ATen.h>

namespace sdtune::models {

at::Tensor LoraLinearImpl::forward(const at::Tensor& x) {
  at::Tensor y = torch::nn::LinearImpl::forward(x);
  if (!lora) return y;
  const at::Tensor h = lora->dropout > 0 && is_training() ? at::dropout(x, lora->dropout, true) : x;
  // Two thin matmuls (r ≪ in, out) rather than B·A: the cost grows with r, not with W's size.
  return y + at::linear(at::linear(h, lora->down), lora->up) * lora->scale;
}

}  // namespace sdtune::models
