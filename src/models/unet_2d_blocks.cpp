#include "sdtune/models/unet_2d_blocks.h"

#include "sdtune/error.h"
#include "sdtune/models/gradient_checkpoint.h"
#include "sdtune/models/lora_branch.h"

namespace sdtune::models {
namespace nn = torch::nn;
namespace {

ResnetBlock2D make_resnet(const UNetBlockOptions& o, int64_t in, int64_t out) {
  return ResnetBlock2D(ResnetBlock2DOptions{.in_channels = in,
                                            .out_channels = out,
                                            .temb_channels = o.temb_channels,
                                            .groups = o.resnet_groups,
                                            .eps = o.resnet_eps,
                                            .output_scale_factor = o.output_scale_factor,
                                            .act = o.act});
}

// The transformer's width equals the block's channels; head dim = channels / heads.
Transformer2DModel make_transformer(const UNetBlockOptions& o, int64_t channels) {
  if (channels % o.heads != 0)
    throw Error("block channels " + std::to_string(channels) + " not divisible by " +
                std::to_string(o.heads) + " attention heads");
  return Transformer2DModel(Transformer2DOptions{.in_channels = channels,
                                                 .heads = o.heads,
                                                 .dim_head = channels / o.heads,
                                                 .num_layers = o.transformer_layers,
                                                 .cross_attention_dim = o.cross_attention_dim,
                                                 .norm_num_groups = o.resnet_groups,
                                                 .use_linear_projection = o.use_linear_projection});
}

// Checkpointing applies only where a backward pass will follow.
bool use_checkpoint(const nn::Module& block, bool enabled) {
  return enabled && block.is_training() && at::GradMode::is_enabled();
}

// resnets[i](h, temb) and attentions[i](h, context), through a gradient checkpoint when asked.
at::Tensor run_resnet(nn::ModuleList resnets, size_t i, const at::Tensor& h, const at::Tensor& temb,
                      bool checkpoint) {
  auto* resnet = resnets[i]->as<ResnetBlock2D>();
  if (!checkpoint) return resnet->forward(h, temb);
  return models::checkpoint(
      [resnet](const std::vector<at::Tensor>& in) { return resnet->forward(in[0], in[1]); },
      {h, temb}, parameters_and_adapters(*resnet));
}

at::Tensor run_attention(nn::ModuleList attentions, size_t i, const at::Tensor& h,
                         const at::Tensor& context, bool checkpoint) {
  auto* attention = attentions[i]->as<Transformer2DModel>();
  if (!checkpoint) return attention->forward(h, context);
  return models::checkpoint(
      [attention](const std::vector<at::Tensor>& in) { return attention->forward(in[0], in[1]); },
      {h, context}, parameters_and_adapters(*attention));
}

}  // namespace

DownBlockImpl::DownBlockImpl(const UNetBlockOptions& o) {
  resnets = register_module("resnets", nn::ModuleList());
  attentions = register_module("attentions", nn::ModuleList());
  downsamplers = register_module("downsamplers", nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets->push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
    if (o.cross_attention) attentions->push_back(make_transformer(o, o.out_channels));
  }
  if (o.add_sampler)
    downsamplers->push_back(Downsample2D(o.out_channels, o.out_channels, o.downsample_padding));
}

std::pair<at::Tensor, std::vector<at::Tensor>> DownBlockImpl::forward(const at::Tensor& x,
                                                                      const at::Tensor& temb,
                                                                      const at::Tensor& context) {
  const bool ckpt = use_checkpoint(*this, gradient_checkpointing);
  std::vector<at::Tensor> states;
  at::Tensor h = x;
  for (size_t i = 0; i < resnets->size(); ++i) {
    h = run_resnet(resnets, i, h, temb, ckpt);
    if (!attentions->is_empty()) h = run_attention(attentions, i, h, context, ckpt);
    states.push_back(h);
  }
  if (!downsamplers->is_empty()) {
    h = downsamplers[0]->as<Downsample2D>()->forward(h);
    states.push_back(h);
  }
  return {h, states};
}

MidBlockCrossAttnImpl::MidBlockCrossAttnImpl(const UNetBlockOptions& o) {
  resnets = register_module("resnets", nn::ModuleList());
  attentions = register_module("attentions", nn::ModuleList());
  resnets->push_back(make_resnet(o, o.in_channels, o.in_channels));
  for (int64_t i = 0; i < o.num_layers; ++i) {
    attentions->push_back(make_transformer(o, o.in_channels));
    resnets->push_back(make_resnet(o, o.in_channels, o.in_channels));
  }
}

at::Tensor MidBlockCrossAttnImpl::forward(const at::Tensor& x, const at::Tensor& temb,
                                          const at::Tensor& context) {
  const bool ckpt = use_checkpoint(*this, gradient_checkpointing);
  at::Tensor h = run_resnet(resnets, 0, x, temb, ckpt);
  for (size_t i = 0; i < attentions->size(); ++i) {
    h = run_attention(attentions, i, h, context, ckpt);
    h = run_resnet(resnets, i + 1, h, temb, ckpt);
  }
  return h;
}

UpBlockImpl::UpBlockImpl(const UNetBlockOptions& o) {
  resnets = register_module("resnets", nn::ModuleList());
  attentions = register_module("attentions", nn::ModuleList());
  upsamplers = register_module("upsamplers", nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    // The last resnet's skip comes from the level below (in_channels); the others' from this level.
    const int64_t skip_channels = i == o.num_layers - 1 ? o.in_channels : o.out_channels;
    const int64_t resnet_in = i == 0 ? o.prev_output_channels : o.out_channels;
    resnets->push_back(make_resnet(o, resnet_in + skip_channels, o.out_channels));
    if (o.cross_attention) attentions->push_back(make_transformer(o, o.out_channels));
  }
  if (o.add_sampler) upsamplers->push_back(Upsample2D(o.out_channels, o.out_channels));
}

at::Tensor UpBlockImpl::forward(const at::Tensor& x, std::vector<at::Tensor> skips,
                                const at::Tensor& temb, const at::Tensor& context,
                                std::optional<std::vector<int64_t>> upsample_size) {
  const bool ckpt = use_checkpoint(*this, gradient_checkpointing);
  at::Tensor h = x;
  for (size_t i = 0; i < resnets->size(); ++i) {
    h = at::cat({h, skips.back()}, 1);
    skips.pop_back();
    h = run_resnet(resnets, i, h, temb, ckpt);
    if (!attentions->is_empty()) h = run_attention(attentions, i, h, context, ckpt);
  }
  if (!upsamplers->is_empty()) h = upsamplers[0]->as<Upsample2D>()->forward(h, upsample_size);
  return h;
}

}  // namespace sdtune::models
