#include "sdtune/models/lora_conv2d.h"

#include <ATen/ATen.h>

namespace sdtune::models {

at::Tensor LoraConv2dImpl::forward(const at::Tensor& x) {
  at::Tensor y = torch::nn::Conv2dImpl::forward(x);
  if (!lora) return y;
  const at::Tensor h = lora->dropout > 0 && is_training() ? at::dropout(x, lora->dropout, true) : x;
  // A: r output channels with the layer's geometry (so the result lines up with y), then B: 1×1.
  const auto& o = options;
  const auto padding = std::get<torch::ExpandingArray<2>>(o.padding());
  const at::Tensor low = at::conv2d(h, lora->down, {}, *o.stride(), *padding, *o.dilation());
  return y + at::conv2d(low, lora->up) * lora->scale;
}

}  // namespace sdtune::models
