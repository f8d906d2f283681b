#pragma once
// diffusers' resnet.py: the residual block and the 2× down/up-sampling layers shared by the UNet
// and the VAE.
#include <optional>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/models/activations.h"
#include "sdtune/models/lora_conv2d.h"

namespace sdtune::models {

struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;  // 0: no time embedding (VAE)
  int64_t groups = 32;
  double eps = 1e-5;
  double output_scale_factor = 1.0;
  Activation act = Activation::SiLU;
};

// out = (shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))) + proj(act(temb)))))) / scale
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // x [B,in,H,W], temb [B,temb_channels] or undefined -> [B,out,H,W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});

  ResnetBlock2DOptions options;
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  LoraConv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

// Stride-2 3×3 conv ("conv"). padding 0 means diffusers' asymmetric pad (right/bottom by 1),
// as the VAE encoder uses.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  at::Tensor forward(const at::Tensor& x);

  int64_t padding;
  LoraConv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

// Nearest-neighbour 2× upsampling (or to an explicit size), then a 3×3 conv ("conv").
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  at::Tensor forward(const at::Tensor& x, std::optional<std::vector<int64_t>> size = std::nullopt);

  LoraConv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace sdtune::models
