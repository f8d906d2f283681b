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

enum class Family { Sd1, Sd2, Sdxl };

struct Level {
  int64_t channels = 0, layers = 0;
  bool attention = false;
  int64_t transformers = 1;  // layers in each of its transformers (SDXL: 1, 2, 10)
};

// The transformer layers of the attention module at `prefix` ("...input_blocks.4.1.").
int64_t transformer_layers(const Reader& r, const std::string& prefix) {
  int64_t n = 0;
  while (r.has(prefix + "transformer_blocks." + std::to_string(n) + ".norm1.weight")) ++n;
  if (n == 0) r.fail("a transformer without layers", prefix + "transformer_blocks");
  return n;
}

json unet_config(const Reader& r, Family family, const Settings& s) {
  const std::string p = "model.diffusion_model.";
  const bool sdxl = family == Family::Sdxl, sd2 = family == Family::Sd2;
  const std::string label = p + "label_emb.0.0.weight";
  if (!sdxl && r.has(label))
    r.fail("a class-conditioned UNet (SD 2.x upscaler or unCLIP) is not SD 1.x/2.x", label);
  if (!sdxl && !r.find(p, ".transformer_blocks.1.norm1.weight").empty())
    r.fail("more than one transformer layer per block is not SD 1.x/2.x",
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
    const int64_t transformers = attention ? transformer_layers(r, block + "1.") : 1;
    if (level.layers > 0 && (channels != level.channels || attention != level.attention ||
                             transformers != level.transformers))
      r.fail("the resnets of one level differ in width, attention or transformer depth",
             block + "0");
    level.channels = channels;
    level.attention = attention;
    level.transformers = transformers;
    ++level.layers;
  }
  for (const Level& level : levels)
    if (level.layers == 0) r.fail("a UNet level without resnets", p + "input_blocks");
  const std::string proj_in = p + "middle_block.1.proj_in.weight";
  r.dim(proj_in, 0);  // the mid block has its transformer
  const std::string to_k = r.find(p, ".attn2.to_k.weight");
  if (to_k.empty()) r.fail("no cross-attention in the UNet", p);

  // diffusers' mid block takes the deepest level's transformer depth.
  if (transformer_layers(r, p + "middle_block.1.") != levels.back().transformers)
    r.fail("the mid block's transformer depth differs from the last level's",
           p + "middle_block.1.transformer_blocks");
  json blocks = json::array(), down = json::array(), up = json::array(), layers = json::array(),
       heads = json::array(), depths = json::array();
  bool equal_layers = true;
  for (const Level& level : levels) {
    blocks.push_back(level.channels);
    depths.push_back(level.transformers);
    down.push_back(level.attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
    layers.push_back(level.layers);
    equal_layers = equal_layers && level.layers == levels[0].layers;
    if (s.head_channels > 0)
      heads.push_back(r.heads_of_width(level.channels, s.head_channels, p + "input_blocks"));
  }
  for (auto it = levels.rbegin(); it != levels.rend(); ++it)
    up.push_back(it->attention ? "CrossAttnUpBlock2D" : "UpBlock2D");
  json config = {
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
  if (sdxl) {
    // text_time: the pooled, projected text (text_projection's width) and six sinusoidal time ids.
    const int64_t in = r.dim(label, 1);
    const int64_t pooled = r.dim("conditioner.embedders.1.model.text_projection", 1);
    if (in <= pooled || (in - pooled) % 6 != 0)
      r.fail("label_emb's input (" + std::to_string(in) + ") is not the pooled text (" +
                 std::to_string(pooled) + ") and six time ids",
             label);
    config["transformer_layers_per_block"] = depths;
    config["addition_embed_type"] = "text_time";
    config["addition_embed_type_num_heads"] = 64;
    config["addition_time_embed_dim"] = (in - pooled) / 6;
    config["projection_class_embeddings_input_dim"] = in;
  }
  return config;
}

json vae_config(const Reader& r, const Settings& s, bool sdxl) {
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
  json config = {
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
  // SDXL's VAE overflows in fp16: its pipeline decodes in fp32.
  if (sdxl) config["force_upcast"] = true;
  return config;
}

// A CLIP text encoder under `p`: transformers' names (CLIP, SD 1.x and SDXL's first), or
// OpenCLIP's (SD 2.x, and SDXL's second with its projection).
struct TextTower {
  std::string prefix;
  bool open_clip = false;
  bool projection = false;  // SDXL's second: CLIPTextModelWithProjection, every layer kept
};

json text_config(const Reader& r, const TextTower& t) {
  int64_t vocab = 0, hidden = 0, positions = 0, layers = 0, intermediate = 0;
  const std::string& p = t.prefix;
  std::string embedding;
  if (t.open_clip) {
    // OpenCLIP's tower. SD 2.x conditions on its penultimate layer, which diffusers' text encoder
    // ends with: a file with the whole tower (as published, with text_projection) has one layer
    // more than the model; one written from diffusers has the model's layers only. SDXL's
    // second encoder keeps every layer (its pooled output is the last one's).
    embedding = p + "token_embedding.weight";
    positions = r.dim(p + "positional_embedding", 0);
    while (r.has(p + "transformer.resblocks." + std::to_string(layers) + ".ln_1.weight")) ++layers;
    if (!t.projection && r.has(p + "text_projection")) --layers;
    if (layers < 1) r.fail("an OpenCLIP text encoder without layers", p + "transformer");
    intermediate = r.dim(p + "transformer.resblocks.0.mlp.c_fc.weight", 0);
  } else {
    embedding = p + "embeddings.token_embedding.weight";
    positions = r.dim(p + "embeddings.position_embedding.weight", 0);
    while (r.has(p + "encoder.layers." + std::to_string(layers) + ".layer_norm1.weight")) ++layers;
    intermediate = r.dim(p + "encoder.layers.0.mlp.fc1.weight", 0);
  }
  vocab = r.dim(embedding, 0);
  hidden = r.dim(embedding, 1);
  return {
      {"architectures", {t.projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
      {"model_type", "clip_text_model"},
      {"vocab_size", vocab},
      {"hidden_size", hidden},
      {"intermediate_size", intermediate},
      {"num_hidden_layers", layers},
      {"num_attention_heads", r.heads_of_width(hidden, 64, embedding)},
      {"max_position_embeddings", positions},
      {"hidden_act", t.open_clip ? "gelu" : "quick_gelu"},
      {"layer_norm_eps", 1e-5},
      {"projection_dim",
       t.projection ? r.dim(p + "text_projection", 1) : (t.open_clip ? 512 : 768)},
      {"initializer_factor", 1.0},
      {"initializer_range", 0.02},
      {"attention_dropout", 0.0},
      {"dropout", 0.0},
      {"bos_token_id", 0},
      {"eos_token_id", 2},
      {"pad_token_id", 1},
  };
}

json scheduler_config(Family family, const std::string& prediction_type) {
  if (family == Family::Sdxl)  // SDXL base's
    return {
        {"_class_name", "EulerDiscreteScheduler"},
        {"num_train_timesteps", 1000},
        {"beta_start", 0.00085},
        {"beta_end", 0.012},
        {"beta_schedule", "scaled_linear"},
        {"trained_betas", nullptr},
        {"interpolation_type", "linear"},
        {"use_karras_sigmas", false},
        {"clip_sample", false},
        {"sample_max_value", 1.0},
        {"set_alpha_to_one", false},
        {"skip_prk_steps", true},
        {"steps_offset", 1},
        {"prediction_type", prediction_type},
        {"timestep_spacing", "leading"},
    };
  const bool sd2 = family == Family::Sd2;
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
  // SD 1.x/2.x name the UNet's config unet_config; SDXL's (sgm) network_config.
  const char* unet_key = params->contains("network_config") ? "network_config" : "unet_config";
  const json& unet = params->contains(unet_key) ? (*params)[unet_key] : none;
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
  const std::string xl_clip = "conditioner.embedders.0.transformer.text_model.",
                    xl_open_clip = "conditioner.embedders.1.model.";
  Family family = Family::Sd1;
  if (r.has("cond_stage_model.model.token_embedding.weight")) {
    family = Family::Sd2;
  } else if (r.has(xl_open_clip + "token_embedding.weight")) {
    if (!r.has(xl_clip + "embeddings.token_embedding.weight"))
      r.fail("SDXL's second text encoder without its first", xl_clip);
    family = Family::Sdxl;
  } else if (!r.has("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")) {
    if (r.has("conditioner.embedders.0.model.token_embedding.weight"))
      r.fail(
          "an SDXL refiner (one OpenCLIP encoder, aesthetic-score conditioning): sdtune reads "
          "SD 1.x, 2.x and the SDXL base");
    r.fail(
        "no text encoder under cond_stage_model.transformer. (SD 1.x), cond_stage_model.model. "
        "(SD 2.x) or conditioner.embedders. (SDXL): not a Stable Diffusion single file");
  }
  const bool sd2 = family == Family::Sd2, sdxl = family == Family::Sdxl;
  if (!prediction_type.empty() && prediction_type != "epsilon" && prediction_type != "v_prediction")
    r.fail("unknown prediction type '" + prediction_type + "' (epsilon or v_prediction)");
  // SD's own settings; SD 2.x files are taken as the 768-v models, as diffusers does. SDXL:
  // 64-wide heads, 1024² images (128² latents), the VAE scaled by 0.13025.
  Settings settings;
  settings.v_prediction = sd2;
  settings.heads = family == Family::Sd1 ? 8 : 0;
  settings.head_channels = family == Family::Sd1 ? 0 : 64;
  if (sdxl) settings.scaling_factor = 0.13025;
  if (ldm) apply_ldm_config(*ldm, settings, r);
  if (!prediction_type.empty()) settings.v_prediction = prediction_type == "v_prediction";
  if (!ldm) settings.sample_size = sdxl ? 128 : sd2 && settings.v_prediction ? 96 : 64;
  const std::string prediction = settings.v_prediction ? "v_prediction" : "epsilon";

  SingleFileConfigs c;
  c.architecture = sdxl ? "SDXL" : sd2 ? "SD 2.x" : "SD 1.x";
  c.unet = unet_config(r, family, settings);
  c.vae = vae_config(r, settings, sdxl);
  c.text_encoder = text_config(r, sd2    ? TextTower{"cond_stage_model.model.", true}
                                  : sdxl ? TextTower{xl_clip}
                                         : TextTower{"cond_stage_model.transformer.text_model."});
  c.scheduler = scheduler_config(family, prediction);
  // SD 2.x pads with "!" (id 0), as OpenCLIP does; SD 1.x with the end token. SDXL: the first
  // tokenizer as SD 1.x, the second as SD 2.x.
  auto tokenizer = [](const std::string& pad, json& config, json& special) {
    config = tokenizer_config(pad);
    special = {{"bos_token", "<|startoftext|>"},
               {"eos_token", "<|endoftext|>"},
               {"pad_token", pad},
               {"unk_token", "<|endoftext|>"}};
  };
  tokenizer(sd2 ? "!" : "<|endoftext|>", c.tokenizer_config, c.special_tokens_map);
  const json none = {nullptr, nullptr};
  if (sdxl) {
    c.text_encoder_2 = text_config(r, TextTower{xl_open_clip, true, true});
    tokenizer("!", c.tokenizer_2_config, c.special_tokens_map_2);
    c.model_index = {{"_class_name", "StableDiffusionXLPipeline"},
                     {"feature_extractor", none},
                     {"image_encoder", none},
                     {"force_zeros_for_empty_prompt", true},
                     {"scheduler", {"diffusers", c.scheduler["_class_name"]}},
                     {"text_encoder", {"transformers", "CLIPTextModel"}},
                     {"text_encoder_2", {"transformers", "CLIPTextModelWithProjection"}},
                     {"tokenizer", {"transformers", "CLIPTokenizer"}},
                     {"tokenizer_2", {"transformers", "CLIPTokenizer"}},
                     {"unet", {"diffusers", "UNet2DConditionModel"}},
                     {"vae", {"diffusers", "AutoencoderKL"}}};
    return c;
  }
  c.model_index = {{"_class_name", "StableDiffusionPipeline"},
                   {"feature_extractor", none},
                   {"requires_safety_checker", false},
                   {"safety_checker", none},
                   {"scheduler", {"diffusers", c.scheduler["_class_name"]}},
                   {"text_encoder", {"transformers", "CLIPTextModel"}},
                   {"tokenizer", {"transformers", "CLIPTokenizer"}},
                   {"unet", {"diffusers", "UNet2DConditionModel"}},
                   {"vae", {"diffusers", "AutoencoderKL"}}};
  return c;
}

}  // namespace sdtune::formats
