#pragma once
// diffusers' Attention: multi-head scaled dot-product attention with to_q/to_k/to_v/to_out.0.
// Used for self- and cross-attention in the UNet's transformer blocks and, with a group norm and
// a residual connection, for the VAE's spatial self-attention.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/models/lora_linear.h"

namespace sdtune::models {

struct AttentionOptions {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: self-attention (keys/values from the query input)
  int64_t heads = 1;
  int64_t dim_head = 64;
  bool bias = false;            // bias on to_q/to_k/to_v
  bool out_bias = true;         // bias on to_out.0
  int64_t norm_num_groups = 0;  // > 0: a GroupNorm "group_norm" on the input (VAE attention)
  double norm_eps = 1e-5;
  bool residual_connection = false;
  double rescale_output_factor = 1.0;
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);

  // x [B,N,query_dim], context [B,M,cross_attention_dim] or undefined for self-attention.
  // Returns [B,N,query_dim].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {});
  // x [B,C,H,W] -> [B,C,H,W]: group norm, attention over the H·W positions, residual.
  at::Tensor forward_spatial(const at::Tensor& x);

  AttentionOptions options;
  torch::nn::GroupNorm group_norm{nullptr};
  // LoRA-capable projections (models/lora_linear.h): plain Linears unless a branch is attached.
  LoraLinear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out;  // [LoraLinear]; diffusers' Dropout at index 1 holds no weights
};
TORCH_MODULE(Attention);

}  // namespace sdtune::models
