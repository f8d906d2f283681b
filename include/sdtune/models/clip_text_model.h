#pragma once
// transformers' CLIPTextModel: the text encoder of SD 1.x (ViT-L/14, quick_gelu) and SD 2.x
// (OpenCLIP ViT-H/14, gelu), and CLIPTextModelWithProjection (SDXL's second encoder, OpenCLIP
// ViT-bigG/14). Parameter names are transformers' keys ("text_model.encoder...").
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "sdtune/io/json_config.h"
#include "sdtune/models/activations.h"
#include "sdtune/models/lora_linear.h"

namespace sdtune::models {

struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  double layer_norm_eps = 1e-5;
  Activation hidden_act = Activation::QuickGELU;
  int64_t eos_token_id = 2;  // 2: legacy configs; the pooled token is then argmax(input_ids)
  // CLIPTextModelWithProjection (SDXL's text_encoder_2): text_projection maps the pooled token to
  // projection_dim; 0 for the plain CLIPTextModel.
  int64_t projection_dim = 0;

  static CLIPTextConfig from_json(const io::JsonConfig& json);
};

struct CLIPTextOutput {
  at::Tensor last_hidden_state;  // [B,L,hidden] after final_layer_norm
  at::Tensor pooler_output;      // [B,hidden]: last_hidden_state at the end-of-text token
  at::Tensor text_embeds;        // [B,projection_dim]: text_projection(pooler_output), if any
  // hidden_states[0] = embeddings, hidden_states[i] = output of layer i (before the final norm);
  // filled only when requested.
  std::vector<at::Tensor> hidden_states;
};

class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config);
  // x [B,L,hidden]; causal self-attention then MLP, each pre-norm with a residual.
  at::Tensor forward(const at::Tensor& x);

  int64_t heads;
  Activation act;
  // LoRA-capable (models/lora_linear.h): plain Linears unless a branch is attached.
  LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  LoraLinear fc1{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

class CLIPTextModelImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelImpl(const CLIPTextConfig& config);
  // input_ids int64 [B,L], L <= max_position_embeddings.
  CLIPTextOutput forward(const at::Tensor& input_ids, bool output_hidden_states = false);

  CLIPTextConfig config;
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  torch::nn::ModuleList layers;
  torch::nn::LayerNorm final_layer_norm{nullptr};
  torch::nn::Linear text_projection{nullptr};  // only with projection_dim > 0
};
TORCH_MODULE(CLIPTextModel);

}  // namespace sdtune::models
