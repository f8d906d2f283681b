#include "sdtune/formats/single_file_configs.h"

#include "sdtune/error.h"

namespace sdtune::formats {
namespace {

using json = nlohmann::json;
using Shapes = std::map<std::string, std::vector<int64_t>>;

class Reader {
 public:
  Reader(const Shapes& shapes, std::string source) : shapes_(shapes), source_(std::move(source)) {}

  bool has(const std::string& key) const { return shapes_.count(key) > 0; }
  // Dimension `dim` of `key`'s shape; an Error naming the key when it is missing.
  int64_t dim(const std::string& key, size_t dim) const {
    const auto it = shapes_.find(key);
    if (it == shapes_.end())
      throw Error(
          "missing, so the architecture cannot be read from the file (give --config DIR, "
          "a diffusers folder of the same architecture)",
          source_, key);
    if (it->second.size() <= dim) throw Error("unexpected shape for this tensor", source_, key);
    return it->second[dim];
  }
  size_t rank(const std::string& key) const { return shapes_.at(key).size(); }
  // The first key with this prefix and suffix, or "".
  std::string find(const std::string& prefix, const std::string& suffix) const {
    for (auto it = shapes_.lower_bound(prefix);
         it != shapes_.end() && it->first.starts_with(prefix); ++it)
      if (it->first.ends_with(suffix)) return it->first;
    return "";
  }
  [[noreturn]] void fail(const std::string& what, const std::string& key = "") const {
    throw Error(what, source_, key);
  }
  int64_t heads_of_width(int64_t width, int64_t head_width, const std::string& key) const {
    if (head_width <= 0 || width % head_width != 0)
      fail("width " + std::to_string(width) + " is no multiple of " + std::to_string(head_width) +
               ", the width of SD's attention heads here: give --config DIR",
           key);
    return width / head_width;
  }

 private:
  const Shapes& shapes_;
  std::string source_;
};

// What the tensors cannot show: SD's published settings, or a sidecar LDM config's.
struct Settings {
  bool v_prediction = false;
  int64_t sample_size = 64;   // latent pixels; the VAE's is 8 times it
  int64_t heads = 0;          // the UNet's heads per block (SD 1.x: 8), or
  int64_t head_channels = 0;  // the width of each head (SD 2.x: 64)
  double scaling_factor = 0.18215;
};

struct Level {
  int64_t channels = 0, layers = 0;
  bool attention = false;
};

json unet_config(const Reader& r, bool sd2, const Settings& s) {
  const std::string p = "model.diffusion_model.";
  if (r.has(p + "label_emb.0.0.weight"))
    r.fail("a class-conditioned UNet (SD 2.x upscaler, unCLIP or SDXL) is not SD 1.x/2.x",
           p + "label_emb.0.0.weight");
  if (!r.find(p, ".transformer_blocks.1.norm1.weight").empty())
    r.fail("more than one transformer layer per block (SDXL?) is not SD 1.x/2.x",
           r.find(p, ".transformer_blocks.1.norm1.weight"));
  const std::string conv_in = p + "input_blocks.0.0.weight";
  // CompVis numbers input blocks through all levels: each level's resnets (each followed by its
  // transformer where the level has attention), then a downsampler but after the last level.
  std::vector<Level> levels(1);
  for (int64_t i = 1;; ++i) {
    const std::string block = p + "input_blocks." + std::to_string(i) + ".";
    if (r.has(block + "0.op.weight")) {
      levels.emplace_back();
      continue;
    }
    if (!r.has(block + "0.in_layers.0.weight")) break;
    Level& level = levels.back();
    const int64_t channels = r.dim(block + "0.out_layers.3.weight", 0);
    const bool attention = r.has(block + "1.proj_in.weight");
    if (level.layers > 0 && (channels != level.channels || attention != level.attention))
      r.fail("the resnets of one level differ in width or attention", block + "0");
    level.channels = channels;
    level.attention = attention;
    ++level.layers;
  }
  for (const Level& level : levels)
    if (level.layers == 0) r.fail("a UNet level without resnets", p + "input_blocks");
  const std::string proj_in = p + "middle_block.1.proj_in.weight";
  r.dim(proj_in, 0);  // the mid block has its transformer
  const std::string to_k = r.find(p, ".attn2.to_k.weight");
  if (to_k.empty()) r.fail("no cross-attention in the UNet", p);

  json blocks = json::array(), down = json::array(), up = json::array(), layers = json::array(),
       heads = json::array();
  bool equal_layers = true;
  for (const Level& level : levels) {
    blocks.push_back(level.channels);
    down.push_back(level.attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
    layers.push_back(level.layers);
    equal_layers = equal_layers && level.layers == levels[0].layers;
    if (s.head_channels > 0)
      heads.push_back(r.heads_of_width(level.channels, s.head_channels, p + "input_blocks"));
  }
  for (auto it = levels.rbegin(); it != levels.rend(); ++it)
    up.push_back(it->attention ? "CrossAttnUpBlock2D" : "UpBlock2D");
  return {
      {"_class_name", "UNet2DConditionModel"},
      {"sample_size", s.sample_size},
      {"in_channels", r.dim(conv_in, 1)},
      {"out_channels", r.dim(p + "out.2.weight", 0)},
      {"center_input_sample", false},
      {"flip_sin_to_cos", true},
      {"freq_shift", 0},
      {"down_block_types", down},
      {"mid_block_type", "UNetMidBlock2DCrossAttn"},
      {"up_block_types", up},
      {"block_out_channels", blocks},
      {"layers_per_block", equal_layers ? json(levels[0].layers) : layers},
      {"downsample_padding", 1},
      {"mid_block_scale_factor", 1},
      {"act_fn", "silu"},
      {"norm_num_groups", 32},
      {"norm_eps", 1e-5},
      {"cross_attention_dim", r.dim(to_k, 1)},
      // diffusers' legacy name: the number of heads (SD 1.x: 8 everywhere).
      {"attention_head_dim", s.head_channels > 0 ? heads : json(s.heads)},
      {"use_linear_projection", r.rank(proj_in) == 2},
      // The 768-v models attend in fp32 (their fp16 softmax overflows); diffusers' SD 2.1 config.
      {"upcast_attention", sd2 && s.v_prediction},
  };
}

json vae_config(const Reader& r, const Settings& s) {
  const std::string p = "first_stage_model.";
  json blocks = json::array();
  int64_t layers = 0;
  for (int64_t i = 0; r.has(p + "encoder.down." + std::to_string(i) + ".block.0.conv1.weight");
       ++i) {
    const std::string level = p + "encoder.down." + std::to_string(i) + ".block.";
    blocks.push_back(r.dim(level + "0.conv1.weight", 0));
    int64_t n = 0;
    while (r.has(level + std::to_string(n) + ".conv1.weight")) ++n;
    if (i > 0 && n != layers) r.fail("VAE levels with different numbers of resnets", level);
    layers = n;
  }
  if (blocks.empty()) r.dim(p + "encoder.down.0.block.0.conv1.weight", 0);  // names the key
  const json types_down(blocks.size(), "DownEncoderBlock2D"),
      types_up(blocks.size(), "UpDecoderBlock2D");
  return {
      {"_class_name", "AutoencoderKL"},
      {"in_channels", r.dim(p + "encoder.conv_in.weight", 1)},
      {"out_channels", r.dim(p + "decoder.conv_out.weight", 0)},
      {"down_block_types", types_down},
      {"up_block_types", types_up},
      {"block_out_channels", blocks},
      {"layers_per_block", layers},
      {"act_fn", "silu"},
      {"latent_channels", r.dim(p + "decoder.conv_in.weight", 1)},
      {"norm_num_groups", 32},
      {"sample_size", 8 * s.sample_size},
      {"scaling_factor", s.scaling_factor},
  };
}

json text_config(const Reader& r, bool sd2) {
  int64_t vocab = 0, hidden = 0, positions = 0, layers = 0, intermediate = 0;
  std::string p;
  if (sd2) {
    // OpenCLIP's tower. SD 2.x conditions on its penultimate layer, which diffusers' text encoder
    // ends with: a file with the whole tower (as published, with text_projection) has one layer
    // more than the model; one written from diffusers has the model's layers only.
    p = "cond_stage_model.model.";
    vocab = r.dim(p + "token_embedding.weight", 0);
    hidden = r.dim(p + "token_embedding.weight", 1);
    positions = r.dim(p + "positional_embedding", 0);
    while (r.has(p + "transformer.resblocks." + std::to_string(layers) + ".ln_1.weight")) ++layers;
    if (r.has(p + "text_projection")) --layers;
    if (layers < 1) r.fail("an OpenCLIP text encoder without layers", p + "transformer");
    intermediate = r.dim(p + "transformer.resblocks.0.mlp.c_fc.weight", 0);
  } else {
    p = "cond_stage_model.transformer.text_model.";
    vocab = r.dim(p + "embeddings.token_embedding.weight", 0);
    hidden = r.dim(p + "embeddings.token_embedding.weight", 1);
    positions = r.dim(p + "embeddings.position_embedding.weight", 0);
    while (r.has(p + "encoder.layers." + std::to_string(layers) + ".layer_norm1.weight")) ++layers;
    intermediate = r.dim(p + "encoder.layers.0.mlp.fc1.weight", 0);
  }
  return {
      {"architectures", {"CLIPTextModel"}},
      {"model_type", "clip_text_model"},
      {"vocab_size", vocab},
      {"hidden_size", hidden},
      {"intermediate_size", intermediate},
      {"num_hidden_layers", layers},
      {"num_attention_heads",
       r.heads_of_width(hidden, 64, p + (sd2 ? "" : "embeddings.") + "token_embedding.weight")},
      {"max_position_embeddings", positions},
      {"hidden_act", sd2 ? "gelu" : "quick_gelu"},
      {"layer_norm_eps", 1e-5},
      {"projection_dim", sd2 ? 512 : 768},
      {"initializer_factor", 1.0},
      {"initializer_range", 0.02},
      {"attention_dropout", 0.0},
      {"dropout", 0.0},
      {"bos_token_id", 0},
      {"eos_token_id", 2},
      {"pad_token_id", 1},
  };
}

json scheduler_config(bool sd2, const std::string& prediction_type) {
  return {
      {"_class_name", sd2 ? "DDIMScheduler" : "PNDMScheduler"},
      {"num_train_timesteps", 1000},
      {"beta_start", 0.00085},
      {"beta_end", 0.012},
      {"beta_schedule", "scaled_linear"},
      {"trained_betas", nullptr},
      {"clip_sample", false},
      {"set_alpha_to_one", false},
      {"skip_prk_steps", true},
      {"steps_offset", 1},
      {"prediction_type", prediction_type},
      {"timestep_spacing", "leading"},
  };
}

json tokenizer_config(const std::string& pad) {
  auto token = [](const char* content) {
    return json{{"content", content}, {"lstrip", false},      {"normalized", true},
                {"rstrip", false},    {"single_word", false}, {"__type", "AddedToken"}};
  };
  return {{"add_prefix_space", false},
          {"bos_token", token("<|startoftext|>")},
          {"do_lower_case", true},
          {"eos_token", token("<|endoftext|>")},
          {"errors", "replace"},
          {"model_max_length", 77},
          {"pad_token", pad},
          {"tokenizer_class", "CLIPTokenizer"},
          {"unk_token", token("<|endoftext|>")}};
}

// A sidecar LDM config's settings in place of SD's: model.params.parameterization ("v"; absent:
// noise), image_size and scale_factor, and unet_config.params.num_heads / num_head_channels.
void apply_ldm_config(const json& ldm, Settings& s, const Reader& r) {
  const json* params = &ldm;
  for (const char* key : {"model", "params"}) {
    if (!params->is_object() || !params->contains(key) || !(*params)[key].is_object())
      r.fail("the sidecar config has no model.params (not an LDM config?)");
    params = &(*params)[key];
  }
  auto number = [&](const json& j, const char* key, int64_t fallback) {
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number_integer())
      r.fail(std::string("the sidecar config's ") + key + " is not an integer");
    return j[key].get<int64_t>();
  };
  s.v_prediction = params->value("parameterization", json("eps")) == json("v");
  if (params->contains("scale_factor") && (*params)["scale_factor"].is_number())
    s.scaling_factor = (*params)["scale_factor"].get<double>();
  const json none = json::object();
  const json& unet = params->contains("unet_config") ? (*params)["unet_config"] : none;
  const json& up = unet.is_object() && unet.contains("params") ? unet["params"] : none;
  // The latent size is model.params.image_size (the UNet's own image_size is marked unused).
  s.sample_size = number(*params, "image_size", s.sample_size);
  const int64_t channels = number(up, "num_head_channels", -1), heads = number(up, "num_heads", -1);
  if (channels > 0) {
    s.head_channels = channels;
    s.heads = 0;
  } else if (heads > 0) {
    s.heads = heads;
    s.head_channels = 0;
  }
}

}  // namespace

SingleFileConfigs infer_single_file_configs(const Shapes& shapes,
                                            const std::string& prediction_type,
                                            const std::string& source, const json* ldm) {
  const Reader r(shapes, source);
  const bool sd2 = r.has("cond_stage_model.model.token_embedding.weight");
  if (!sd2 && !r.has("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")) {
    if (r.has("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"))
      r.fail("an SDXL checkpoint (conditioner.embedders.*): sdtune reads SD 1.x and 2.x");
    r.fail(
        "no text encoder under cond_stage_model.transformer. (SD 1.x) or cond_stage_model.model. "
        "(SD 2.x): not a Stable Diffusion 1.x/2.x single file");
  }
  if (!prediction_type.empty() && prediction_type != "epsilon" && prediction_type != "v_prediction")
    r.fail("unknown prediction type '" + prediction_type + "' (epsilon or v_prediction)");
  // SD's own settings; SD 2.x files are taken as the 768-v models, as diffusers does.
  Settings settings;
  settings.v_prediction = sd2;
  settings.heads = sd2 ? 0 : 8;
  settings.head_channels = sd2 ? 64 : 0;
  if (ldm) apply_ldm_config(*ldm, settings, r);
  if (!prediction_type.empty()) settings.v_prediction = prediction_type == "v_prediction";
  if (!ldm) settings.sample_size = sd2 && settings.v_prediction ? 96 : 64;
  const std::string prediction = settings.v_prediction ? "v_prediction" : "epsilon";

  SingleFileConfigs c;
  c.architecture = sd2 ? "SD 2.x" : "SD 1.x";
  c.unet = unet_config(r, sd2, settings);
  c.vae = vae_config(r, settings);
  c.text_encoder = text_config(r, sd2);
  c.scheduler = scheduler_config(sd2, prediction);
  // SD 2.x pads with "!" (id 0), as OpenCLIP does; SD 1.x with the end token.
  const std::string pad = sd2 ? "!" : "<|endoftext|>";
  c.tokenizer_config = tokenizer_config(pad);
  c.special_tokens_map = {{"bos_token", "<|startoftext|>"},
                          {"eos_token", "<|endoftext|>"},
                          {"pad_token", pad},
                          {"unk_token", "<|endoftext|>"}};
  c.model_index = {{"_class_name", "StableDiffusionPipeline"},
                   {"feature_extractor", {nullptr, nullptr}},
                   {"requires_safety_checker", false},
                   {"safety_checker", {nullptr, nullptr}},
                   {"scheduler", {"diffusers", c.scheduler["_class_name"]}},
                   {"text_encoder", {"transformers", "CLIPTextModel"}},
                   {"tokenizer", {"transformers", "CLIPTokenizer"}},
                   {"unet", {"diffusers", "UNet2DConditionModel"}},
                   {"vae", {"diffusers", "AutoencoderKL"}}};
  return c;
}

}  // namespace sdtune::formats
