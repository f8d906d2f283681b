#pragma once
// UNet2DConditionModel for the SD 1.x and SD 2.x families, built from diffusers' unet/config.json.
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/io/json_config.h"
#include "sdtune/models/embeddings.h"
#include "sdtune/models/unet_2d_blocks.h"

namespace sdtune::models {

struct UNet2DConditionConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  int64_t sample_size = 64;
  std::vector<std::string> down_block_types;
  std::vector<std::string> up_block_types;
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;     // per down block
  std::vector<int64_t> num_attention_heads;  // per down block (see from_json)
  std::vector<int64_t> transformer_layers_per_block;
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  bool flip_sin_to_cos = true;
  double freq_shift = 0.0;
  bool use_linear_projection = false;
  bool upcast_attention = false;  // SD 2.1; SDPA already accumulates in fp32
  bool center_input_sample = false;
  Activation act = Activation::SiLU;
  // SDXL's micro-conditioning (addition_embed_type "text_time"): the pooled text embedding and
  // the six size/crop numbers, each number embedded sinusoidally to addition_time_embed_dim,
  // are concatenated (projection_class_embeddings_input_dim wide) and lifted to the time
  // embedding's width, then added to it.
  bool text_time_embedding = false;
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;

  // Reads unet/config.json. attention_head_dim is, by a historical naming accident in diffusers,
  // the number of heads whenever num_attention_heads is absent (SD 1.5: 8 heads; SD 2.x:
  // [5,10,20,20] heads of 64). Options sdtune does not implement (class embeddings, addition
  // embeddings, other block types, ...) are an Error naming the key.
  static UNet2DConditionConfig from_json(const io::JsonConfig& json);
};

// The extra conditioning an SDXL UNet (text_time) takes besides the timestep and the context.
struct AddedConditions {
  at::Tensor text_embeds;  // [B, P]: text_encoder_2's projected pooled output
  at::Tensor time_ids;     // [B, K]: (original h, w, crop top, left, target h, w), K = 6 for SDXL
};

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

  // sample [B,in,h,w] (any h, w), timestep [B] or scalar (int or float), context [B,L,D]
  // -> predicted noise (or v) [B,out,h,w]. `added` is required exactly when the config has
  // text_time conditioning (SDXL).
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep,
                     const at::Tensor& context, const AddedConditions* added = nullptr);

  // Gradient checkpointing of every resnet and transformer in the down, mid and up blocks (in
  // effect while training with grad mode on): less activation memory for one more forward.
  void set_gradient_checkpointing(bool enabled);

  // add_embedding(cat(text_embeds, sinusoidal(time_ids))) for the text_time conditioning.
  at::Tensor added_embedding(const AddedConditions* added, int64_t batch, at::ScalarType dtype);

  UNet2DConditionConfig config;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  TimestepEmbedding add_embedding{nullptr};  // text_time only
  torch::nn::ModuleList down_blocks, up_blocks;
  MidBlockCrossAttn mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(UNet2DConditionModel);

}  // namespace sdtune::models
