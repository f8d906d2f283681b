#include "sdtune/models/transformer_2d.h"

namespace sdtune::models {
namespace nn = torch::nn;

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t inner_dim) {
  // State-dict keys are net.0.proj.* and net.2.* (net.1 is a Dropout).
  auto net = register_module("net", nn::ModuleList());
  auto geglu = std::make_shared<nn::Module>();
  proj = geglu->register_module("proj", LoraLinear(dim, 2 * inner_dim));
  out = LoraLinear(inner_dim, dim);
  net->push_back(geglu);
  net->push_back(std::make_shared<nn::Module>());  // Dropout placeholder: keeps index 2 for out
  net->push_back(out);
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  auto halves = proj->forward(x).chunk(2, -1);
  return out->forward(halves[0] * at::gelu(halves[1]));
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head,
                                                     int64_t cross_attention_dim) {
  auto ln = [&] { return nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)); };
  AttentionOptions self{.query_dim = dim, .heads = heads, .dim_head = dim_head};
  AttentionOptions cross = self;
  cross.cross_attention_dim = cross_attention_dim;
  norm1 = register_module("norm1", ln());
  attn1 = register_module("attn1", Attention(self));
  norm2 = register_module("norm2", ln());
  attn2 = register_module("attn2", Attention(cross));
  norm3 = register_module("norm3", ln());
  ff = register_module("ff", FeedForward(dim, 4 * dim));
}

at::Tensor BasicTransformerBlockImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  at::Tensor h = attn1->forward(norm1->forward(x)) + x;
  h = attn2->forward(norm2->forward(h), context) + h;
  return ff->forward(norm3->forward(h)) + h;
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DOptions& o) : options(o) {
  const int64_t inner = o.heads * o.dim_head;
  norm = register_module(
      "norm", nn::GroupNorm(nn::GroupNormOptions(o.norm_num_groups, o.in_channels).eps(1e-6)));
  if (o.use_linear_projection) {
    proj_in_linear = register_module("proj_in", LoraLinear(o.in_channels, inner));
  } else {
    proj_in_conv =
        register_module("proj_in", LoraConv2d(nn::Conv2dOptions(o.in_channels, inner, 1)));
  }
  transformer_blocks = register_module("transformer_blocks", nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i)
    transformer_blocks->push_back(
        BasicTransformerBlock(inner, o.heads, o.dim_head, o.cross_attention_dim));
  if (o.use_linear_projection) {
    proj_out_linear = register_module("proj_out", LoraLinear(inner, o.in_channels));
  } else {
    proj_out_conv =
        register_module("proj_out", LoraConv2d(nn::Conv2dOptions(inner, o.in_channels, 1)));
  }
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t inner = options.heads * options.dim_head;
  at::Tensor h = norm->forward(x);
  // Tokens are the H·W positions; the projection is applied before (conv) or after (linear)
  // flattening, as diffusers does, so that numerics match for both layouts.
  if (options.use_linear_projection) {
    h = h.permute({0, 2, 3, 1}).reshape({B, H * W, options.in_channels});
    h = proj_in_linear->forward(h);
  } else {
    h = proj_in_conv->forward(h);
    h = h.permute({0, 2, 3, 1}).reshape({B, H * W, inner});
  }
  for (const auto& block : *transformer_blocks)
    h = block->as<BasicTransformerBlock>()->forward(h, context);
  if (options.use_linear_projection) {
    h = proj_out_linear->forward(h);
    h = h.reshape({B, H, W, options.in_channels}).permute({0, 3, 1, 2}).contiguous();
  } else {
    h = h.reshape({B, H, W, inner}).permute({0, 3, 1, 2}).contiguous();
    h = proj_out_conv->forward(h);
  }
  return h + x;
}

}  // namespace sdtune::models
