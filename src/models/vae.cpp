#include "sdtune/models/vae.h"

namespace sdtune::models {
namespace nn = torch::nn;
namespace {

constexpr double kVaeEps = 1e-6;  // diffusers' VAE uses eps 1e-6 in every norm

ResnetBlock2D vae_resnet(int64_t in, int64_t out, const VaeOptions& o) {
  return ResnetBlock2D(ResnetBlock2DOptions{.in_channels = in,
                                            .out_channels = out,
                                            .groups = o.norm_num_groups,
                                            .eps = kVaeEps,
                                            .act = o.act});
}

nn::GroupNorm vae_norm(int64_t channels, const VaeOptions& o) {
  return nn::GroupNorm(nn::GroupNormOptions(o.norm_num_groups, channels).eps(kVaeEps));
}

}  // namespace

VaeMidBlockImpl::VaeMidBlockImpl(int64_t channels, const VaeOptions& o) {
  resnets = register_module("resnets", nn::ModuleList());
  attentions = register_module("attentions", nn::ModuleList());
  resnets->push_back(vae_resnet(channels, channels, o));
  if (o.mid_block_add_attention)
    attentions->push_back(Attention(AttentionOptions{.query_dim = channels,
                                                     .heads = 1,
                                                     .dim_head = channels,
                                                     .bias = true,
                                                     .norm_num_groups = o.norm_num_groups,
                                                     .norm_eps = kVaeEps,
                                                     .residual_connection = true}));
  resnets->push_back(vae_resnet(channels, channels, o));
}

at::Tensor VaeMidBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = resnets[0]->as<ResnetBlock2D>()->forward(x);
  if (!attentions->is_empty()) h = attentions[0]->as<Attention>()->forward_spatial(h);
  return resnets[1]->as<ResnetBlock2D>()->forward(h);
}

DownEncoderBlockImpl::DownEncoderBlockImpl(int64_t in, int64_t out, bool add_downsample,
                                           const VaeOptions& o) {
  resnets = register_module("resnets", nn::ModuleList());
  downsamplers = register_module("downsamplers", nn::ModuleList());
  for (int64_t i = 0; i < o.layers_per_block; ++i)
    resnets->push_back(vae_resnet(i == 0 ? in : out, out, o));
  if (add_downsample) downsamplers->push_back(Downsample2D(out, out, /*padding=*/0));
}

at::Tensor DownEncoderBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (const auto& r : *resnets) h = r->as<ResnetBlock2D>()->forward(h);
  if (!downsamplers->is_empty()) h = downsamplers[0]->as<Downsample2D>()->forward(h);
  return h;
}

UpDecoderBlockImpl::UpDecoderBlockImpl(int64_t in, int64_t out, bool add_upsample,
                                       const VaeOptions& o) {
  resnets = register_module("resnets", nn::ModuleList());
  upsamplers = register_module("upsamplers", nn::ModuleList());
  for (int64_t i = 0; i < o.layers_per_block + 1; ++i)
    resnets->push_back(vae_resnet(i == 0 ? in : out, out, o));
  if (add_upsample) upsamplers->push_back(Upsample2D(out, out));
}

at::Tensor UpDecoderBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (const auto& r : *resnets) h = r->as<ResnetBlock2D>()->forward(h);
  if (!upsamplers->is_empty()) h = upsamplers[0]->as<Upsample2D>()->forward(h);
  return h;
}

EncoderImpl::EncoderImpl(const VaeOptions& o) : options(o) {
  const auto& ch = o.block_out_channels;
  conv_in =
      register_module("conv_in", nn::Conv2d(nn::Conv2dOptions(o.in_channels, ch[0], 3).padding(1)));
  down_blocks = register_module("down_blocks", nn::ModuleList());
  int64_t out = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t in = out;
    out = ch[i];
    down_blocks->push_back(DownEncoderBlock(in, out, i + 1 != ch.size(), o));
  }
  mid_block = register_module("mid_block", VaeMidBlock(ch.back(), o));
  conv_norm_out = register_module("conv_norm_out", vae_norm(ch.back(), o));
  conv_out = register_module(
      "conv_out", nn::Conv2d(nn::Conv2dOptions(ch.back(), 2 * o.latent_channels, 3).padding(1)));
}

at::Tensor EncoderImpl::forward(const at::Tensor& x) {
  at::Tensor h = conv_in->forward(x);
  for (const auto& b : *down_blocks) h = b->as<DownEncoderBlock>()->forward(h);
  h = mid_block->forward(h);
  return conv_out->forward(activate(options.act, conv_norm_out->forward(h)));
}

DecoderImpl::DecoderImpl(const VaeOptions& o) : options(o) {
  const auto& ch = o.block_out_channels;
  conv_in = register_module(
      "conv_in", nn::Conv2d(nn::Conv2dOptions(o.latent_channels, ch.back(), 3).padding(1)));
  mid_block = register_module("mid_block", VaeMidBlock(ch.back(), o));
  up_blocks = register_module("up_blocks", nn::ModuleList());
  int64_t out = ch.back();
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t prev = out;
    out = ch[ch.size() - 1 - i];
    up_blocks->push_back(UpDecoderBlock(prev, out, i + 1 != ch.size(), o));
  }
  conv_norm_out = register_module("conv_norm_out", vae_norm(ch[0], o));
  conv_out = register_module("conv_out",
                             nn::Conv2d(nn::Conv2dOptions(ch[0], o.out_channels, 3).padding(1)));
}

at::Tensor DecoderImpl::forward(const at::Tensor& z) {
  at::Tensor h = conv_in->forward(z);
  h = mid_block->forward(h);
  for (const auto& b : *up_blocks) h = b->as<UpDecoderBlock>()->forward(h);
  return conv_out->forward(activate(options.act, conv_norm_out->forward(h)));
}

}  // namespace sdtune::models
