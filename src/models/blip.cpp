#include "sdtune/models/blip.h"

#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pickle_checkpoint.h"
#include "sdtune/io/state_dict.h"

namespace sdtune::models {
namespace nn = torch::nn;
namespace fs = std::filesystem;
namespace {

nn::LayerNorm layer_norm(int64_t d, double eps) {
  return nn::LayerNorm(nn::LayerNormOptions({d}).eps(eps));
}

// [B,L,H·d] -> [B,H,L,d]
at::Tensor heads(const at::Tensor& x, int64_t h) {
  return x.view({x.size(0), x.size(1), h, x.size(2) / h}).transpose(1, 2);
}
at::Tensor merge(const at::Tensor& x) {  // [B,H,L,d] -> [B,L,H·d]
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

// A ViT layer: pre-norm self-attention (q, k, v from one fused projection) and GELU MLP.
class VisionLayerImpl : public nn::Module {
 public:
  VisionLayerImpl(const BlipConfig& c) : heads_(c.vision_heads) {
    const int64_t d = c.vision_hidden;
    auto attn = register_module("self_attn", std::make_shared<nn::Module>());
    qkv = attn->register_module("qkv", nn::Linear(d, 3 * d));
    projection = attn->register_module("projection", nn::Linear(d, d));
    layer_norm1 = register_module("layer_norm1", layer_norm(d, c.vision_eps));
    auto mlp = register_module("mlp", std::make_shared<nn::Module>());
    fc1 = mlp->register_module("fc1", nn::Linear(d, c.vision_intermediate));
    fc2 = mlp->register_module("fc2", nn::Linear(c.vision_intermediate, d));
    layer_norm2 = register_module("layer_norm2", layer_norm(d, c.vision_eps));
  }
  at::Tensor forward(const at::Tensor& x) {
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2), H = heads_;
    // qkv [B,L,3·D] -> 3 × [B,H,L,D/H]
    const at::Tensor t = qkv->forward(layer_norm1->forward(x)).view({B, L, 3, H, D / H});
    const at::Tensor p = t.permute({2, 0, 3, 1, 4});
    const at::Tensor a = at::scaled_dot_product_attention(p[0], p[1], p[2]);
    const at::Tensor h = x + projection->forward(merge(a));
    return h + fc2->forward(at::gelu(fc1->forward(layer_norm2->forward(h))));
  }
  nn::Linear qkv{nullptr}, projection{nullptr}, fc1{nullptr}, fc2{nullptr};
  nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(VisionLayer);

// BERT's attention block: query/key/value, then dense + LayerNorm around the residual (post-norm).
class BertAttentionImpl : public nn::Module {
 public:
  BertAttentionImpl(const BlipConfig& c, int64_t kv_dim) : heads_(c.text_heads) {
    const int64_t d = c.text_hidden;
    auto self = register_module("self", std::make_shared<nn::Module>());
    query = self->register_module("query", nn::Linear(d, d));
    key = self->register_module("key", nn::Linear(kv_dim, d));
    value = self->register_module("value", nn::Linear(kv_dim, d));
    auto output = register_module("output", std::make_shared<nn::Module>());
    dense = output->register_module("dense", nn::Linear(d, d));
    norm = output->register_module("LayerNorm", layer_norm(d, c.text_eps));
  }
  // Self-attention (causal) when `context` is undefined, else cross-attention to all of it.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {}) {
    const bool cross = context.defined();
    const auto [k, v] = keys_values(cross ? context : x);
    return attend(x, k, v, /*causal=*/!cross);
  }
  // The keys and values of `kv` by head: [B,H,N,D/H] each.
  std::pair<at::Tensor, at::Tensor> keys_values(const at::Tensor& kv) {
    return {heads(key->forward(kv), heads_), heads(value->forward(kv), heads_)};
  }
  // Attention of x's queries over given keys and values, then the output block.
  at::Tensor attend(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, bool causal) {
    const at::Tensor a = at::scaled_dot_product_attention(heads(query->forward(x), heads_), k, v,
                                                          /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                          /*is_causal=*/causal);
    return norm->forward(dense->forward(merge(a)) + x);
  }
  nn::Linear query{nullptr}, key{nullptr}, value{nullptr}, dense{nullptr};
  nn::LayerNorm norm{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(BertAttention);

class TextLayerImpl : public nn::Module {
 public:
  TextLayerImpl(const BlipConfig& c) {
    attention = register_module("attention", BertAttention(c, c.text_hidden));
    crossattention = register_module("crossattention", BertAttention(c, c.encoder_hidden));
    auto intermediate = register_module("intermediate", std::make_shared<nn::Module>());
    intermediate_dense =
        intermediate->register_module("dense", nn::Linear(c.text_hidden, c.text_intermediate));
    auto output = register_module("output", std::make_shared<nn::Module>());
    output_dense = output->register_module("dense", nn::Linear(c.text_intermediate, c.text_hidden));
    output_norm = output->register_module("LayerNorm", layer_norm(c.text_hidden, c.text_eps));
  }
  // image_k, image_v: this layer's cross-attention keys and values of the image (keys_values).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& image_k, const at::Tensor& image_v) {
    const at::Tensor h =
        crossattention->attend(attention->forward(x), image_k, image_v, /*causal=*/false);
    return output_norm->forward(output_dense->forward(at::gelu(intermediate_dense->forward(h))) +
                                h);
  }
  BertAttention attention{nullptr}, crossattention{nullptr};
  nn::Linear intermediate_dense{nullptr}, output_dense{nullptr};
  nn::LayerNorm output_norm{nullptr};
};
TORCH_MODULE(TextLayer);

const io::JsonConfig section(const io::JsonConfig& j, const char* key) {
  const auto& json = j.json();
  if (!json.contains(key) || !json[key].is_object())
    throw Error("no " + std::string(key) + " object (not a BlipConfig?)", j.source(), key);
  return io::JsonConfig(json[key], j.source() + " " + key);
}

}  // namespace

BlipConfig BlipConfig::from_json(const io::JsonConfig& j) {
  BlipConfig c;
  const io::JsonConfig v = section(j, "vision_config"), t = section(j, "text_config");
  c.image_size = v.get_int("image_size", c.image_size);
  c.patch_size = v.get_int("patch_size", c.patch_size);
  c.vision_hidden = v.get_int("hidden_size", c.vision_hidden);
  c.vision_intermediate = v.get_int("intermediate_size", c.vision_intermediate);
  c.vision_layers = v.get_int("num_hidden_layers", c.vision_layers);
  c.vision_heads = v.get_int("num_attention_heads", c.vision_heads);
  c.vision_eps = v.get_double("layer_norm_eps", c.vision_eps);
  c.vocab_size = t.get_int("vocab_size", c.vocab_size);
  c.text_hidden = t.get_int("hidden_size", c.text_hidden);
  c.text_intermediate = t.get_int("intermediate_size", c.text_intermediate);
  c.text_layers = t.get_int("num_hidden_layers", c.text_layers);
  c.text_heads = t.get_int("num_attention_heads", c.text_heads);
  c.max_positions = t.get_int("max_position_embeddings", c.max_positions);
  c.encoder_hidden = t.get_int("encoder_hidden_size", c.encoder_hidden);
  c.text_eps = t.get_double("layer_norm_eps", c.text_eps);
  c.bos_token_id = t.get_int("bos_token_id", c.bos_token_id);
  c.sep_token_id = t.get_int("sep_token_id", c.sep_token_id);
  c.pad_token_id = t.get_int("pad_token_id", c.pad_token_id);
  for (const auto& [what, v2, heads] :
       {std::tuple<const char*, int64_t, int64_t>{"vision_config", c.vision_hidden, c.vision_heads},
        {"text_config", c.text_hidden, c.text_heads}})
    if (v2 < 1 || heads < 1 || v2 % heads != 0)
      throw Error("hidden_size " + std::to_string(v2) + " is not divisible by " +
                      std::to_string(heads) + " heads",
                  j.source(), what);
  if (c.patch_size < 1 || c.image_size % c.patch_size != 0)
    throw Error("image_size is no multiple of patch_size", j.source(), "vision_config");
  return c;
}

BlipForConditionalGenerationImpl::BlipForConditionalGenerationImpl(const BlipConfig& c)
    : config(c) {
  auto vision = register_module("vision_model", std::make_shared<nn::Module>());
  auto emb = vision->register_module("embeddings", std::make_shared<nn::Module>());
  const int64_t patches = (c.image_size / c.patch_size) * (c.image_size / c.patch_size);
  class_embedding = emb->register_parameter("class_embedding", at::zeros({1, 1, c.vision_hidden}));
  position_embedding =
      emb->register_parameter("position_embedding", at::zeros({1, patches + 1, c.vision_hidden}));
  patch_embedding = emb->register_module(
      "patch_embedding",
      nn::Conv2d(nn::Conv2dOptions(3, c.vision_hidden, c.patch_size).stride(c.patch_size)));
  auto venc = vision->register_module("encoder", std::make_shared<nn::Module>());
  vision_layers = venc->register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < c.vision_layers; ++i) vision_layers->push_back(VisionLayer(c));
  post_layernorm =
      vision->register_module("post_layernorm", layer_norm(c.vision_hidden, c.vision_eps));

  auto text = register_module("text_decoder", std::make_shared<nn::Module>());
  auto bert = text->register_module("bert", std::make_shared<nn::Module>());
  auto temb = bert->register_module("embeddings", std::make_shared<nn::Module>());
  word_embeddings =
      temb->register_module("word_embeddings", nn::Embedding(c.vocab_size, c.text_hidden));
  position_embeddings =
      temb->register_module("position_embeddings", nn::Embedding(c.max_positions, c.text_hidden));
  embeddings_norm = temb->register_module("LayerNorm", layer_norm(c.text_hidden, c.text_eps));
  auto tenc = bert->register_module("encoder", std::make_shared<nn::Module>());
  text_layers = tenc->register_module("layer", nn::ModuleList());
  for (int64_t i = 0; i < c.text_layers; ++i) text_layers->push_back(TextLayer(c));
  auto cls = text->register_module("cls", std::make_shared<nn::Module>());
  auto predictions = cls->register_module("predictions", std::make_shared<nn::Module>());
  prediction_bias = predictions->register_parameter("bias", at::zeros({c.vocab_size}));
  auto transform = predictions->register_module("transform", std::make_shared<nn::Module>());
  transform_dense = transform->register_module("dense", nn::Linear(c.text_hidden, c.text_hidden));
  transform_norm = transform->register_module("LayerNorm", layer_norm(c.text_hidden, c.text_eps));
  decoder = predictions->register_module("decoder", nn::Linear(c.text_hidden, c.vocab_size));
}

at::Tensor BlipForConditionalGenerationImpl::encode_image(const at::Tensor& pixel_values) {
  const int64_t B = pixel_values.size(0);
  // Patches [B,D,h,w] -> [B,h·w,D], behind the class token; then the learned positions.
  at::Tensor x = patch_embedding->forward(pixel_values).flatten(2).transpose(1, 2);
  x = at::cat({class_embedding.expand({B, 1, config.vision_hidden}), x}, 1);
  if (x.size(1) != position_embedding.size(1))
    throw Error("pixel_values of " + std::to_string(pixel_values.size(2)) + "×" +
                std::to_string(pixel_values.size(3)) + " pixels; the model takes " +
                std::to_string(config.image_size) + "×" + std::to_string(config.image_size));
  x = x + position_embedding;
  for (const auto& layer : *vision_layers) x = layer->as<VisionLayer>()->forward(x);
  return post_layernorm->forward(x);
}

BlipImageKeys BlipForConditionalGenerationImpl::image_keys(const at::Tensor& image_embeds) {
  BlipImageKeys keys;
  for (const auto& layer : *text_layers)
    keys.layers.push_back(layer->as<TextLayer>()->crossattention->keys_values(image_embeds));
  return keys;
}

at::Tensor BlipForConditionalGenerationImpl::decode(const at::Tensor& input_ids,
                                                    const at::Tensor& image_embeds) {
  return decode(input_ids, image_keys(image_embeds));
}

at::Tensor BlipForConditionalGenerationImpl::decode(const at::Tensor& input_ids,
                                                    const BlipImageKeys& keys) {
  const int64_t L = input_ids.size(1);
  if (L > config.max_positions)
    throw Error(std::to_string(L) + " tokens, more than max_position_embeddings " +
                std::to_string(config.max_positions));
  const at::Tensor positions = at::arange(L, input_ids.options().dtype(at::kLong));
  at::Tensor x = embeddings_norm->forward(word_embeddings->forward(input_ids) +
                                          position_embeddings->forward(positions).unsqueeze(0));
  for (size_t i = 0; i < text_layers->size(); ++i) {
    const auto& [k, v] = keys.layers.at(i);
    x = text_layers[i]->as<TextLayer>()->forward(x, k, v);
  }
  return decoder->forward(transform_norm->forward(at::gelu(transform_dense->forward(x))));
}

BlipForConditionalGeneration load_blip(const std::filesystem::path& dir) {
  const io::JsonConfig json = io::JsonConfig::load(dir / "config.json");
  BlipForConditionalGeneration model(BlipConfig::from_json(json));
  // Safetensors; else the pytorch_model.bin older repositories publish, read without running its
  // pickle (io/pickle_checkpoint).
  io::StateDict state;
  if (fs::exists(dir / "pytorch_model.bin") && !fs::exists(dir / "model.safetensors") &&
      !fs::exists(dir / "model.safetensors.index.json")) {
    for (auto& [name, t] : io::read_pickle_checkpoint(dir / "pytorch_model.bin").tensors)
      state[name] = t;
  } else {
    state = io::read_state_dict(io::find_weight_files(dir));
  }
  // transformers saves tied weights once: the decoder's are the word embeddings and the bias.
  const std::string p = "text_decoder.cls.predictions.";
  if (!state.count(p + "decoder.weight") &&
      state.count("text_decoder.bert.embeddings.word_embeddings.weight"))
    state[p + "decoder.weight"] = state["text_decoder.bert.embeddings.word_embeddings.weight"];
  if (!state.count(p + "decoder.bias") && state.count(p + "bias"))
    state[p + "decoder.bias"] = state[p + "bias"];
  io::load_into(*model, state, dir.string(), {"text_decoder.bert.embeddings.position_ids"});
  model->eval();
  return model;
}

}  // namespace sdtune::models
