#pragma once
// The VAE's encoder and decoder (diffusers' autoencoders/vae.py) and the blocks only they use.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/models/attention.h"
#include "sdtune/models/resnet.h"

namespace sdtune::models {

struct VaeOptions {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels{128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  Activation act = Activation::SiLU;
  bool mid_block_add_attention = true;
};

// UNetMidBlock2D without time embedding: resnet, single-head spatial self-attention, resnet.
class VaeMidBlockImpl : public torch::nn::Module {
 public:
  VaeMidBlockImpl(int64_t channels, const VaeOptions& options);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets, attentions;
};
TORCH_MODULE(VaeMidBlock);

// DownEncoderBlock2D: resnets, then an optional stride-2 downsampler.
class DownEncoderBlockImpl : public torch::nn::Module {
 public:
  DownEncoderBlockImpl(int64_t in, int64_t out, bool add_downsample, const VaeOptions& options);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets, downsamplers;
};
TORCH_MODULE(DownEncoderBlock);

// UpDecoderBlock2D: resnets (layers_per_block + 1 of them), then an optional 2× upsampler.
class UpDecoderBlockImpl : public torch::nn::Module {
 public:
  UpDecoderBlockImpl(int64_t in, int64_t out, bool add_upsample, const VaeOptions& options);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::ModuleList resnets, upsamplers;
};
TORCH_MODULE(UpDecoderBlock);

// Image [B,in,H,W] -> moments [B,2·latent,H/f,W/f] (mean and log-variance, before quant_conv).
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const VaeOptions& options);
  at::Tensor forward(const at::Tensor& x);
  VaeOptions options;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks;
  VaeMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Encoder);

// Latents [B,latent,h,w] (after post_quant_conv) -> image [B,out,h·f,w·f].
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const VaeOptions& options);
  at::Tensor forward(const at::Tensor& z);
  VaeOptions options;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  VaeMidBlock mid_block{nullptr};
  torch::nn::ModuleList up_blocks;
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Decoder);

}  // namespace sdtune::models
