#pragma once
// The UNet's down, mid and up blocks (diffusers' unet_2d_blocks.py). A block with attention
// (CrossAttnDownBlock2D / CrossAttnUpBlock2D) and one without (DownBlock2D / UpBlock2D) differ
// only in whether a Transformer2DModel follows each resnet, so one class serves both.
// Each block's `gradient_checkpointing`: when set and the block is training with grad mode on,
// every resnet and transformer call goes through train::checkpoint (activations recomputed in
// backward instead of kept), as diffusers' enable_gradient_checkpointing.
#include <optional>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "sdtune/models/resnet.h"
#include "sdtune/models/transformer_2d.h"

namespace sdtune::models {

struct UNetBlockOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channels = 0;  // up blocks: channels coming from the block below
  int64_t temb_channels = 0;
  int64_t num_layers = 2;
  bool cross_attention = true;  // Transformer2DModel after each resnet
  bool add_sampler = true;      // downsampler (down blocks) / upsampler (up blocks)
  int64_t resnet_groups = 32;
  double resnet_eps = 1e-5;
  double output_scale_factor = 1.0;
  Activation act = Activation::SiLU;
  int64_t downsample_padding = 1;
  // Transformer settings (when cross_attention).
  int64_t heads = 8;
  int64_t transformer_layers = 1;
  int64_t cross_attention_dim = 768;
  bool use_linear_projection = false;
};

// CrossAttnDownBlock2D / DownBlock2D. Returns the output and every intermediate state the up
// path consumes as a skip connection.
class DownBlockImpl : public torch::nn::Module {
 public:
  explicit DownBlockImpl(const UNetBlockOptions& options);
  std::pair<at::Tensor, std::vector<at::Tensor>> forward(const at::Tensor& x,
                                                         const at::Tensor& temb,
                                                         const at::Tensor& context);
  torch::nn::ModuleList resnets, attentions, downsamplers;
  bool gradient_checkpointing = false;
};
TORCH_MODULE(DownBlock);

// UNetMidBlock2DCrossAttn: resnet, then (attention, resnet) × num_layers.
class MidBlockCrossAttnImpl : public torch::nn::Module {
 public:
  explicit MidBlockCrossAttnImpl(const UNetBlockOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb, const at::Tensor& context);
  torch::nn::ModuleList resnets, attentions;
  bool gradient_checkpointing = false;
};
TORCH_MODULE(MidBlockCrossAttn);

// CrossAttnUpBlock2D / UpBlock2D: each resnet takes the concatenation of the running state and
// one skip connection (consumed from the back of `skips`).
class UpBlockImpl : public torch::nn::Module {
 public:
  explicit UpBlockImpl(const UNetBlockOptions& options);
  at::Tensor forward(const at::Tensor& x, std::vector<at::Tensor> skips, const at::Tensor& temb,
                     const at::Tensor& context,
                     std::optional<std::vector<int64_t>> upsample_size = std::nullopt);
  int64_t num_layers() const { return static_cast<int64_t>(resnets->size()); }
  torch::nn::ModuleList resnets, attentions, upsamplers;
  bool gradient_checkpointing = false;
};
TORCH_MODULE(UpBlock);

}  // namespace sdtune::models
