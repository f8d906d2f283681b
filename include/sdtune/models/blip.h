#pragma once
// transformers' BlipForConditionalGeneration (BLIP captioning, Salesforce/blip-image-captioning-*):
// a ViT image encoder (BlipVisionModel) and a BERT text decoder with cross-attention to the image
// (BlipTextLMHeadModel). Parameter names are transformers' keys ("vision_model.encoder.layers.0.
// self_attn.qkv.weight", "text_decoder.bert.encoder.layer.0.crossattention.self.query.weight").
#include <filesystem>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/io/json_config.h"

namespace sdtune::models {

struct BlipConfig {
  // vision_config
  int64_t image_size = 384, patch_size = 16, vision_hidden = 768, vision_intermediate = 3072,
          vision_layers = 12, vision_heads = 12;
  double vision_eps = 1e-5;
  // text_config
  int64_t vocab_size = 30524, text_hidden = 768, text_intermediate = 3072, text_layers = 12,
          text_heads = 12, max_positions = 512, encoder_hidden = 768;
  double text_eps = 1e-12;
  int64_t bos_token_id = 30522, sep_token_id = 102, pad_token_id = 0;

  // From config.json (BlipConfig: vision_config and text_config objects).
  static BlipConfig from_json(const io::JsonConfig& json);
};

// The decoder's cross-attention keys and values of one batch of image embeddings, per layer
// ([B,heads,N,head_dim] each). They do not change while a caption grows, so decoding computes them
// once per image instead of once per token (the same numbers).
struct BlipImageKeys {
  std::vector<std::pair<at::Tensor, at::Tensor>> layers;
};

class BlipForConditionalGenerationImpl : public torch::nn::Module {
 public:
  explicit BlipForConditionalGenerationImpl(const BlipConfig& config);

  // pixel_values [B,3,image_size,image_size] -> image_embeds [B,1+patches,vision_hidden] (the
  // vision model's last_hidden_state, after post_layernorm).
  at::Tensor encode_image(const at::Tensor& pixel_values);
  // input_ids int64 [B,L], image_embeds [B,N,encoder_hidden] -> logits [B,L,vocab]: causal
  // self-attention over the text, cross-attention to every image token.
  at::Tensor decode(const at::Tensor& input_ids, const at::Tensor& image_embeds);
  // The same with the image's keys and values already made (image_keys).
  at::Tensor decode(const at::Tensor& input_ids, const BlipImageKeys& keys);
  BlipImageKeys image_keys(const at::Tensor& image_embeds);

  BlipConfig config;
  // vision_model
  at::Tensor class_embedding, position_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::nn::ModuleList vision_layers;
  torch::nn::LayerNorm post_layernorm{nullptr};
  // text_decoder
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  torch::nn::LayerNorm embeddings_norm{nullptr};
  torch::nn::ModuleList text_layers;
  torch::nn::Linear transform_dense{nullptr}, decoder{nullptr};
  torch::nn::LayerNorm transform_norm{nullptr};
  at::Tensor prediction_bias;
};
TORCH_MODULE(BlipForConditionalGeneration);

// Builds the model from DIR/config.json and loads DIR's safetensors (or its pytorch_model.bin,
// through the restricted pickle reader) strictly. The decoder's output
// weights, which transformers leaves out of the file when they are tied to the word embeddings,
// are taken from those.
BlipForConditionalGeneration load_blip(const std::filesystem::path& dir);

}  // namespace sdtune::models
