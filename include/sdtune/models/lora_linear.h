#pragma once
// torch::nn::Linear with an optional low-rank branch (models/lora_branch.h):
//   y = x·Wᵀ + b + (alpha / r) · B·A·dropout(x)
// W and b are the module's own parameters "weight" and "bias", exactly as in torch's Linear, so
// state dicts and loading are unchanged.
#include <memory>

#include <torch/nn/modules/linear.h>

#include "sdtune/models/lora_branch.h"

namespace sdtune::models {

class LoraLinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& x);

  std::shared_ptr<LoraBranch> lora;  // none: a plain Linear
};
TORCH_MODULE(LoraLinear);

}  // namespace sdtune::models
