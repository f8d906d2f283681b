#pragma once
// diffusers' Transformer2DModel (continuous input) and BasicTransformerBlock: the spatial
// transformer that lets the UNet attend to itself and to the text.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/models/attention.h"
#include "sdtune/models/lora_conv2d.h"

namespace sdtune::models {

// GEGLU feed-forward: net.0.proj = Linear(dim, 2·inner); h, gate = chunk(2); net.2 = Linear(inner,
// dim) of h · gelu(gate).
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, int64_t inner_dim);
  at::Tensor forward(const at::Tensor& x);

  LoraLinear proj{nullptr}, out{nullptr};  // LoRA-capable (models/lora_linear.h)
};
TORCH_MODULE(FeedForward);

// x = x + attn1(norm1(x)); x = x + attn2(norm2(x), text); x = x + ff(norm3(x))
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head,
                            int64_t cross_attention_dim);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DOptions {
  int64_t in_channels = 0;
  int64_t heads = 8;
  int64_t dim_head = 40;
  int64_t num_layers = 1;
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  bool use_linear_projection = false;  // SD 2.x: Linear proj_in/proj_out instead of 1×1 convs
};

// [B,C,H,W] -> group norm -> proj_in -> tokens [B,H·W,inner] -> blocks -> proj_out -> + residual
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);

  Transformer2DOptions options;
  torch::nn::GroupNorm norm{nullptr};
  // proj_in/proj_out are Linear (use_linear_projection) or 1×1 Conv2d: exactly one of each pair is
  // set.
  LoraLinear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  LoraConv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  torch::nn::ModuleList transformer_blocks;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace sdtune::models
