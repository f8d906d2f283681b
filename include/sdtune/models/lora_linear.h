#pragma once
// torch::nn::Linear with an optional low-rank branch (PEFT's LoRA layer):
//   y = x·Wᵀ + b + (alpha / r) · B·A·dropout(x)
// W and b are the module's own parameters "weight" and "bias", exactly as in torch's Linear, so
// state dicts and loading are unchanged. A [r, in] and B [out, r] belong to the branch and are not
// registered parameters: the model's weights stay frozen and savable as they are while a trainer
// optimizes the branches it attached (or a LoRA file's are applied without merging them).
#include <memory>
#include <vector>

#include <torch/nn/modules/linear.h>

namespace sdtune::models {

struct LoraBranch {
  at::Tensor down, up;   // A [r, in], B [out, r]
  double scale = 1.0;    // alpha / r
  double dropout = 0.0;  // on the branch's input, in training mode only
};

class LoraLinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& x);

  std::shared_ptr<LoraBranch> lora;  // none: a plain Linear
};
TORCH_MODULE(LoraLinear);

// The module's parameters and the low-rank factors of the branches attached below it: everything
// its forward reads that may need a gradient (what a gradient checkpoint must link its output to).
std::vector<at::Tensor> parameters_and_adapters(const torch::nn::Module& module);

}  // namespace sdtune::models
