#include "sdtune/models/clip_text_model.h"

#include <algorithm>

#include "sdtune/error.h"

namespace sdtune::models {
namespace nn = torch::nn;

CLIPTextConfig CLIPTextConfig::from_json(const io::JsonConfig& j) {
  CLIPTextConfig c;
  c.vocab_size = j.get_int("vocab_size", c.vocab_size);
  c.hidden_size = j.get_int("hidden_size", c.hidden_size);
  c.intermediate_size = j.get_int("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = j.get_int("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = j.get_int("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = j.get_int("max_position_embeddings", c.max_position_embeddings);
  c.layer_norm_eps = j.get_double("layer_norm_eps", c.layer_norm_eps);
  c.hidden_act = parse_activation(j.get_string("hidden_act", "quick_gelu"));
  c.eos_token_id = j.get_int("eos_token_id", c.eos_token_id);
  if (j.has("architectures")) {
    const auto archs = j.get_string_list("architectures");
    if (std::find(archs.begin(), archs.end(), "CLIPTextModelWithProjection") != archs.end()) {
      c.projection_dim = j.get_int("projection_dim", 512);  // transformers' default
      if (c.projection_dim < 1)
        throw Error("must be positive, got " + std::to_string(c.projection_dim), j.source(),
                    "projection_dim");
    }
  }
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"hidden_size", c.hidden_size},
                                   {"num_attention_heads", c.num_attention_heads}})
    if (value < 1) throw Error("must be positive, got " + std::to_string(value), j.source(), key);
  if (c.hidden_size % c.num_attention_heads != 0)
    throw Error("hidden_size " + std::to_string(c.hidden_size) +
                    " not divisible by num_attention_heads " +
                    std::to_string(c.num_attention_heads),
                j.source(), "num_attention_heads");
  return c;
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& c)
    : heads(c.num_attention_heads), act(c.hidden_act) {
  const int64_t d = c.hidden_size;
  auto attn = register_module("self_attn", std::make_shared<nn::Module>());
  q_proj = attn->register_module("q_proj", LoraLinear(d, d));
  k_proj = attn->register_module("k_proj", LoraLinear(d, d));
  v_proj = attn->register_module("v_proj", LoraLinear(d, d));
  out_proj = attn->register_module("out_proj", LoraLinear(d, d));
  layer_norm1 = register_module("layer_norm1",
                                nn::LayerNorm(nn::LayerNormOptions({d}).eps(c.layer_norm_eps)));
  auto mlp = register_module("mlp", std::make_shared<nn::Module>());
  fc1 = mlp->register_module("fc1", LoraLinear(d, c.intermediate_size));
  fc2 = mlp->register_module("fc2", LoraLinear(c.intermediate_size, d));
  layer_norm2 = register_module("layer_norm2",
                                nn::LayerNorm(nn::LayerNormOptions({d}).eps(c.layer_norm_eps)));
}

at::Tensor CLIPEncoderLayerImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), H = heads;
  at::Tensor h = layer_norm1->forward(x);
  at::Tensor q = q_proj->forward(h).view({B, L, H, D / H}).transpose(1, 2);
  at::Tensor k = k_proj->forward(h).view({B, L, H, D / H}).transpose(1, 2);
  at::Tensor v = v_proj->forward(h).view({B, L, H, D / H}).transpose(1, 2);
  // Causal: token i attends to tokens 0..i only (CLIP's text transformer is autoregressive).
  at::Tensor a = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                  /*is_causal=*/true);
  h = x + out_proj->forward(a.transpose(1, 2).reshape({B, L, D}));
  return h + fc2->forward(activate(act, fc1->forward(layer_norm2->forward(h))));
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& c) : config(c) {
  auto text_model = register_module("text_model", std::make_shared<nn::Module>());
  auto embeddings = text_model->register_module("embeddings", std::make_shared<nn::Module>());
  token_embedding =
      embeddings->register_module("token_embedding", nn::Embedding(c.vocab_size, c.hidden_size));
  position_embedding = embeddings->register_module(
      "position_embedding", nn::Embedding(c.max_position_embeddings, c.hidden_size));
  auto encoder = text_model->register_module("encoder", std::make_shared<nn::Module>());
  layers = encoder->register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(CLIPEncoderLayer(c));
  final_layer_norm = text_model->register_module(
      "final_layer_norm",
      nn::LayerNorm(nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
  if (c.projection_dim > 0)
    text_projection =
        register_module("text_projection",
                        nn::Linear(nn::LinearOptions(c.hidden_size, c.projection_dim).bias(false)));
}

CLIPTextOutput CLIPTextModelImpl::forward(const at::Tensor& input_ids, bool output_hidden_states) {
  const int64_t L = input_ids.size(1);
  if (L > config.max_position_embeddings)
    throw Error("input_ids has " + std::to_string(L) +
                " tokens, more than max_position_embeddings " +
                std::to_string(config.max_position_embeddings));
  at::Tensor positions = at::arange(L, input_ids.options().dtype(at::kLong));
  at::Tensor h =
      token_embedding->forward(input_ids) + position_embedding->forward(positions).unsqueeze(0);
  CLIPTextOutput out;
  if (output_hidden_states) out.hidden_states.push_back(h);
  for (const auto& layer : *layers) {
    h = layer->as<CLIPEncoderLayer>()->forward(h);
    if (output_hidden_states) out.hidden_states.push_back(h);
  }
  out.last_hidden_state = final_layer_norm->forward(h);
  // The pooled token is the end-of-text token: the first eos id, or (legacy configs with
  // eos_token_id 2) the highest id in the row, which is where <|endoftext|> = 49407 sits.
  at::Tensor eos_pos = config.eos_token_id == 2
                           ? input_ids.to(at::kInt).argmax(-1)
                           : (input_ids == config.eos_token_id).to(at::kInt).argmax(-1);
  const int64_t B = input_ids.size(0), D = config.hidden_size;
  at::Tensor index = eos_pos.to(at::kLong).view({B, 1, 1}).expand({B, 1, D});
  out.pooler_output = out.last_hidden_state.gather(1, index).squeeze(1);
  if (text_projection) out.text_embeds = text_projection->forward(out.pooler_output);
  return out;
}

}  // namespace sdtune::models
