#pragma once
// torch::nn::Conv2d with an optional low-rank branch (models/lora_branch.h), PEFT's Conv2d LoRA
// (kohya's LoCon):
//   y = conv(x; W, b) + (alpha / r) · conv1×1(conv(dropout(x); A); B)
// A [r, in, kh, kw] convolves with the layer's own kernel size, stride and padding; B [out, r, 1,
// 1] mixes the r channels back. "weight" and "bias" are torch's Conv2d parameters, unchanged.
#include <memory>

#include <torch/nn/modules/conv.h>

#include "sdtune/models/lora_branch.h"

namespace sdtune::models {

class LoraConv2dImpl : public torch::nn::Conv2dImpl {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  at::Tensor forward(const at::Tensor& x);

  std::shared_ptr<LoraBranch> lora;  // none: a plain Conv2d
};
TORCH_MODULE(LoraConv2d);

}  // namespace sdtune::models
