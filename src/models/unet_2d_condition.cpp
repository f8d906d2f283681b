#include "sdtune/models/unet_2d_condition.h"

#include <algorithm>

#include "sdtune/error.h"

namespace sdtune::models {
namespace nn = torch::nn;

UNet2DConditionConfig UNet2DConditionConfig::from_json(const io::JsonConfig& j) {
  auto unsupported_unless = [&](const char* key, bool ok) {
    if (!ok)
      throw Error("unsupported value " + j.json().at(key).dump() +
                      " (sdtune implements SD 1.x/2.x/XL UNets)",
                  j.source(), key);
  };
  UNet2DConditionConfig c;
  c.in_channels = j.get_int("in_channels", 4);
  c.out_channels = j.get_int("out_channels", 4);
  c.sample_size = j.get_int("sample_size", 64);
  c.block_out_channels = j.get_int_list("block_out_channels");
  const size_t n = c.block_out_channels.size();
  if (n == 0) throw Error("a UNet needs at least one block", j.source(), "block_out_channels");
  for (const int64_t channels : c.block_out_channels)
    if (channels < 1)
      throw Error("channel counts must be positive, got " + std::to_string(channels), j.source(),
                  "block_out_channels");
  c.down_block_types = j.get_string_list("down_block_types");
  c.up_block_types = j.get_string_list("up_block_types");
  if (c.down_block_types.size() != n || c.up_block_types.size() != n)
    throw Error("down_block_types, up_block_types and block_out_channels must have the same length",
                j.source(), "down_block_types");
  for (const auto& t : c.down_block_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      throw Error("unsupported down block type '" + t + "'", j.source(), "down_block_types");
  for (const auto& t : c.up_block_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      throw Error("unsupported up block type '" + t + "'", j.source(), "up_block_types");
  c.layers_per_block = j.get_int_or_list("layers_per_block", n, 2);
  // Heads: num_attention_heads when given, else attention_head_dim (which then means heads).
  if (j.has("num_attention_heads"))
    c.num_attention_heads = j.get_int_or_list("num_attention_heads", n);
  else
    c.num_attention_heads = j.get_int_or_list("attention_head_dim", n, 8);
  c.transformer_layers_per_block = j.get_int_or_list("transformer_layers_per_block", n, 1);
  if (j.has("cross_attention_dim")) {
    auto dims = j.get_int_or_list("cross_attention_dim", n);
    if (std::adjacent_find(dims.begin(), dims.end(), std::not_equal_to<>()) != dims.end())
      throw Error("per-block cross_attention_dim values must be equal", j.source(),
                  "cross_attention_dim");
    c.cross_attention_dim = dims[0];
  }
  c.norm_num_groups = j.get_int("norm_num_groups", 32);
  c.norm_eps = j.get_double("norm_eps", 1e-5);
  c.downsample_padding = j.get_int("downsample_padding", 1);
  c.mid_block_scale_factor = j.get_double("mid_block_scale_factor", 1.0);
  c.flip_sin_to_cos = j.get_bool("flip_sin_to_cos", true);
  c.freq_shift = j.get_double("freq_shift", 0.0);
  c.use_linear_projection = j.get_bool("use_linear_projection", false);
  c.upcast_attention = j.get_bool("upcast_attention", false);
  c.center_input_sample = j.get_bool("center_input_sample", false);
  c.act = parse_activation(j.get_string("act_fn", "silu"));

  if (j.has("addition_embed_type")) {
    unsupported_unless("addition_embed_type", j.get_string("addition_embed_type") == "text_time");
    c.text_time_embedding = true;
    c.addition_time_embed_dim = j.get_int("addition_time_embed_dim");
    c.projection_class_embeddings_input_dim = j.get_int("projection_class_embeddings_input_dim");
    for (const char* key : {"addition_time_embed_dim", "projection_class_embeddings_input_dim"})
      if (j.get_int(key) < 1)
        throw Error("must be positive, got " + std::to_string(j.get_int(key)), j.source(), key);
  }
  for (const char* key : {"class_embed_type", "encoder_hid_dim", "num_class_embeds",
                          "time_cond_proj_dim", "timestep_post_act", "time_embedding_dim"})
    unsupported_unless(key, !j.has(key));
  if (!c.text_time_embedding)
    unsupported_unless("projection_class_embeddings_input_dim",
                       !j.has("projection_class_embeddings_input_dim"));
  unsupported_unless("mid_block_type", j.get_string("mid_block_type", "UNetMidBlock2DCrossAttn") ==
                                           "UNetMidBlock2DCrossAttn");
  unsupported_unless("time_embedding_type",
                     j.get_string("time_embedding_type", "positional") == "positional");
  unsupported_unless("resnet_time_scale_shift",
                     j.get_string("resnet_time_scale_shift", "default") == "default");
  unsupported_unless("dual_cross_attention", !j.get_bool("dual_cross_attention", false));
  unsupported_unless("conv_in_kernel", j.get_int("conv_in_kernel", 3) == 3);
  unsupported_unless("conv_out_kernel", j.get_int("conv_out_kernel", 3) == 3);
  if (j.has("only_cross_attention") && j.json().at("only_cross_attention") != false &&
      j.json().at("only_cross_attention") != nlohmann::json::array())
    unsupported_unless("only_cross_attention", false);
  return c;
}

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& c) : config(c) {
  const auto& ch = c.block_out_channels;
  const int64_t n = static_cast<int64_t>(ch.size());
  const int64_t time_embed_dim = ch[0] * 4;
  conv_in =
      register_module("conv_in", nn::Conv2d(nn::Conv2dOptions(c.in_channels, ch[0], 3).padding(1)));
  time_embedding =
      register_module("time_embedding", TimestepEmbedding(ch[0], time_embed_dim, c.act));
  // diffusers builds add_embedding with its default SiLU, whatever act_fn says.
  if (c.text_time_embedding)
    add_embedding =
        register_module("add_embedding", TimestepEmbedding(c.projection_class_embeddings_input_dim,
                                                           time_embed_dim, Activation::SiLU));

  auto block_options = [&](int64_t i) {
    UNetBlockOptions o;
    o.temb_channels = time_embed_dim;
    o.resnet_groups = c.norm_num_groups;
    o.resnet_eps = c.norm_eps;
    o.act = c.act;
    o.heads = c.num_attention_heads[i];
    o.transformer_layers = c.transformer_layers_per_block[i];
    o.cross_attention_dim = c.cross_attention_dim;
    o.use_linear_projection = c.use_linear_projection;
    o.downsample_padding = c.downsample_padding;
    return o;
  };

  down_blocks = register_module("down_blocks", nn::ModuleList());
  int64_t out_ch = ch[0];
  for (int64_t i = 0; i < n; ++i) {
    UNetBlockOptions o = block_options(i);
    o.in_channels = out_ch;
    o.out_channels = out_ch = ch[i];
    o.num_layers = c.layers_per_block[i];
    o.cross_attention = c.down_block_types[i] == "CrossAttnDownBlock2D";
    o.add_sampler = i != n - 1;
    down_blocks->push_back(DownBlock(o));
  }

  UNetBlockOptions mid = block_options(n - 1);
  mid.in_channels = mid.out_channels = ch[n - 1];
  mid.num_layers = 1;
  mid.output_scale_factor = c.mid_block_scale_factor;
  mid_block = register_module("mid_block", MidBlockCrossAttn(mid));

  // Up path: the down settings reversed; each up block has one more resnet than its down twin.
  up_blocks = register_module("up_blocks", nn::ModuleList());
  out_ch = ch[n - 1];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = n - 1 - i;
    UNetBlockOptions o = block_options(r);
    o.prev_output_channels = out_ch;
    o.out_channels = out_ch = ch[r];
    o.in_channels = ch[std::max<int64_t>(r - 1, 0)];
    o.num_layers = c.layers_per_block[r] + 1;
    o.cross_attention = c.up_block_types[i] == "CrossAttnUpBlock2D";
    o.add_sampler = i != n - 1;
    up_blocks->push_back(UpBlock(o));
  }

  conv_norm_out = register_module(
      "conv_norm_out",
      nn::GroupNorm(nn::GroupNormOptions(c.norm_num_groups, ch[0]).eps(c.norm_eps)));
  conv_out = register_module("conv_out",
                             nn::Conv2d(nn::Conv2dOptions(ch[0], c.out_channels, 3).padding(1)));
}

at::Tensor UNet2DConditionModelImpl::added_embedding(const AddedConditions* added, int64_t batch,
                                                     at::ScalarType dtype) {
  if (added == nullptr || !added->text_embeds.defined() || !added->time_ids.defined())
    throw Error("this UNet (addition_embed_type text_time, SDXL) needs text_embeds and time_ids");
  const at::Tensor& text = added->text_embeds;
  const at::Tensor& ids = added->time_ids;
  if (text.dim() != 2 || ids.dim() != 2 || text.size(0) != batch || ids.size(0) != batch)
    throw Error("text_embeds and time_ids must be [B, n] with B = " + std::to_string(batch));
  const int64_t width = text.size(1) + ids.size(1) * config.addition_time_embed_dim;
  if (width != config.projection_class_embeddings_input_dim)
    throw Error("text_embeds (" + std::to_string(text.size(1)) + ") + time_ids (" +
                std::to_string(ids.size(1)) + " x " +
                std::to_string(config.addition_time_embed_dim) + ") give " + std::to_string(width) +
                " features, the UNet expects " +
                std::to_string(config.projection_class_embeddings_input_dim) +
                " (projection_class_embeddings_input_dim)");
  // Each size/crop number gets its own sinusoidal embedding, as a timestep would (float32).
  at::Tensor time_embeds = timestep_embedding(ids.flatten(), config.addition_time_embed_dim,
                                              config.flip_sin_to_cos, config.freq_shift)
                               .reshape({batch, -1});
  at::Tensor features = at::cat({text.to(time_embeds.scalar_type()), time_embeds}, -1);
  return add_embedding->forward(features.to(dtype));
}

void UNet2DConditionModelImpl::set_gradient_checkpointing(bool enabled) {
  for (const auto& block : *down_blocks) block->as<DownBlock>()->gradient_checkpointing = enabled;
  mid_block->gradient_checkpointing = enabled;
  for (const auto& block : *up_blocks) block->as<UpBlock>()->gradient_checkpointing = enabled;
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample_in,
                                             const at::Tensor& timestep, const at::Tensor& context,
                                             const AddedConditions* added) {
  const int64_t B = sample_in.size(0);
  // Latent sizes that are not multiples of 2^(number of upsamplers) need explicit upsample sizes
  // so that up-path states line up with their skip connections.
  const int64_t up_factor = int64_t{1} << (config.block_out_channels.size() - 1);
  const bool explicit_upsample_size =
      sample_in.size(2) % up_factor != 0 || sample_in.size(3) % up_factor != 0;

  at::Tensor sample = config.center_input_sample ? 2.0 * sample_in - 1.0 : sample_in;
  at::Tensor t = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  t = t.to(sample.device()).expand({B});
  at::Tensor t_emb =
      timestep_embedding(t, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
          .to(sample.scalar_type());
  at::Tensor emb = time_embedding->forward(t_emb);
  if (config.text_time_embedding)
    emb = emb + added_embedding(added, B, emb.scalar_type());
  else if (added != nullptr)
    throw Error("this UNet takes no text_embeds/time_ids (its config has no text_time embedding)");

  sample = conv_in->forward(sample);
  std::vector<at::Tensor> skips{sample};
  for (const auto& block : *down_blocks) {
    auto [h, states] = block->as<DownBlock>()->forward(sample, emb, context);
    sample = h;
    skips.insert(skips.end(), states.begin(), states.end());
  }
  sample = mid_block->forward(sample, emb, context);

  for (size_t i = 0; i < up_blocks->size(); ++i) {
    auto up = up_blocks[i]->as<UpBlock>();
    const size_t take = static_cast<size_t>(up->num_layers());
    std::vector<at::Tensor> mine(skips.end() - take, skips.end());
    skips.resize(skips.size() - take);
    std::optional<std::vector<int64_t>> size;
    if (explicit_upsample_size && i + 1 < up_blocks->size())
      size = std::vector<int64_t>{skips.back().size(2), skips.back().size(3)};
    sample = up->forward(sample, std::move(mine), emb, context, size);
  }
  sample = activate(config.act, conv_norm_out->forward(sample));
  return conv_out->forward(sample);
}

}  // namespace sdtune::models
