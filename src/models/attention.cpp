#include "sdtune/models/attention.h"

namespace sdtune::models {
namespace nn = torch::nn;

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options(o) {
  const int64_t inner = o.heads * o.dim_head;
  const int64_t kv_dim = o.cross_attention_dim > 0 ? o.cross_attention_dim : o.query_dim;
  if (o.norm_num_groups > 0)
    group_norm = register_module(
        "group_norm",
        nn::GroupNorm(nn::GroupNormOptions(o.norm_num_groups, o.query_dim).eps(o.norm_eps)));
  to_q = register_module("to_q", LoraLinear(nn::LinearOptions(o.query_dim, inner).bias(o.bias)));
  to_k = register_module("to_k", LoraLinear(nn::LinearOptions(kv_dim, inner).bias(o.bias)));
  to_v = register_module("to_v", LoraLinear(nn::LinearOptions(kv_dim, inner).bias(o.bias)));
  to_out = register_module("to_out", nn::ModuleList());
  to_out->push_back(LoraLinear(nn::LinearOptions(inner, o.query_dim).bias(o.out_bias)));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const at::Tensor& kv = context.defined() ? context : x;
  const int64_t B = x.size(0), N = x.size(1), M = kv.size(1);
  const int64_t H = options.heads, D = options.dim_head;
  // [B,N,H·D] -> [B,H,N,D]; softmax(q kᵀ / √D) v is computed by SDPA (flash / memory-efficient
  // kernels on CUDA, a fused kernel on CPU), with the default scale 1/√D.
  at::Tensor q = to_q->forward(x).view({B, N, H, D}).transpose(1, 2);
  at::Tensor k = to_k->forward(kv).view({B, M, H, D}).transpose(1, 2);
  at::Tensor v = to_v->forward(kv).view({B, M, H, D}).transpose(1, 2);
  at::Tensor out = at::scaled_dot_product_attention(q, k, v);
  out = out.transpose(1, 2).reshape({B, N, H * D});
  return to_out[0]->as<LoraLinear>()->forward(out);
}

at::Tensor AttentionImpl::forward_spatial(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), Hh = x.size(2), W = x.size(3);
  at::Tensor h = group_norm ? group_norm->forward(x) : x;
  h = h.view({B, C, Hh * W}).transpose(1, 2);
  h = forward(h);
  h = h.transpose(1, 2).reshape({B, C, Hh, W});
  if (options.residual_connection) h = h + x;
  return options.rescale_output_factor == 1.0 ? h : h / options.rescale_output_factor;
}

}  // namespace sdtune::models
