#include "sdtune/models/resnet.h"

namespace sdtune::models {
namespace nn = torch::nn;

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options(o) {
  norm1 = register_module("norm1",
                          nn::GroupNorm(nn::GroupNormOptions(o.groups, o.in_channels).eps(o.eps)));
  conv1 = register_module(
      "conv1", LoraConv2d(nn::Conv2dOptions(o.in_channels, o.out_channels, 3).padding(1)));
  if (o.temb_channels > 0)
    time_emb_proj = register_module("time_emb_proj", nn::Linear(o.temb_channels, o.out_channels));
  norm2 = register_module("norm2",
                          nn::GroupNorm(nn::GroupNormOptions(o.groups, o.out_channels).eps(o.eps)));
  conv2 = register_module(
      "conv2", LoraConv2d(nn::Conv2dOptions(o.out_channels, o.out_channels, 3).padding(1)));
  if (o.in_channels != o.out_channels)
    conv_shortcut = register_module(
        "conv_shortcut", LoraConv2d(nn::Conv2dOptions(o.in_channels, o.out_channels, 1)));
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x, const at::Tensor& temb) {
  at::Tensor h = conv1->forward(activate(options.act, norm1->forward(x)));
  if (time_emb_proj && temb.defined()) {
    // The time embedding shifts every channel: [B,out] broadcast over H×W.
    h = h + time_emb_proj->forward(activate(options.act, temb)).unsqueeze(-1).unsqueeze(-1);
  }
  h = conv2->forward(activate(options.act, norm2->forward(h)));
  at::Tensor shortcut = conv_shortcut ? conv_shortcut->forward(x) : x;
  at::Tensor out = shortcut + h;
  return options.output_scale_factor == 1.0 ? out : out / options.output_scale_factor;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding)
    : padding(padding) {
  conv = register_module(
      "conv", LoraConv2d(nn::Conv2dOptions(channels, out_channels, 3).stride(2).padding(padding)));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (padding == 0) return conv->forward(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv->forward(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv =
      register_module("conv", LoraConv2d(nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, std::optional<std::vector<int64_t>> size) {
  at::Tensor h = x;
  // Large batches hit a slow non-contiguous path in upsample_nearest2d.
  if (h.size(0) >= 64) h = h.contiguous();
  if (size)
    h = at::upsample_nearest2d(h, *size);
  else
    h = at::upsample_nearest2d(h, {2 * x.size(2), 2 * x.size(3)});
  return conv->forward(h);
}

}  // namespace sdtune::models
