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

std::vector<at::Tensor> parameters_and_adapters(const torch::nn::Module& module) {
  std::vector<at::Tensor> out = module.parameters();
  for (const auto& m : module.modules(/*include_self=*/true))
    if (const auto* layer = m->as<LoraLinearImpl>(); layer != nullptr && layer->lora)
      out.insert(out.end(), {layer->lora->down, layer->lora->up});
  return out;
}

}  // namespace sdtune::models
