#pragma once
// Key names of single-file Stable Diffusion checkpoints (the original CompVis/Stability layout
// that A1111 and ComfyUI load and share) against diffusers' per-component names. One table of
// module prefixes, built from the components' configs, serves both directions, so that a file
// written from a folder reads back to the same keys.
// - UNet: model.diffusion_model.{input_blocks.I.J, middle_block.J, output_blocks.I.J, ...}.
// - VAE: first_stage_model.{encoder.down.I.block.J, decoder.up.I (levels reversed), mid.attn_1}.
// - Text encoder, SD 1.x: cond_stage_model.transformer.text_model.* (transformers' names).
// - Text encoder, SD 2.x: cond_stage_model.model.* (OpenCLIP's names: transformer.resblocks.I,
//   with q, k and v fused into attn.in_proj_weight; ln_final; positional_embedding).
// - SDXL: conditioner.embedders.0.transformer.text_model.* (CLIP ViT-L, transformers' names) and
//   conditioner.embedders.1.model.* (OpenCLIP ViT-bigG, every layer, and text_projection: the
//   transpose of diffusers' text_projection.weight); the UNet's text_time embedding is
//   label_emb.0.{0,2}.
#include <optional>
#include <string>
#include <vector>

#include "sdtune/io/json_config.h"

namespace sdtune::formats {

enum class SingleFileComponent { Unet, Vae, TextEncoder, TextEncoder2 };
enum class TextLayout { Clip, OpenClip, Sdxl };  // SD 1.x, SD 2.x, SDXL's two encoders

// A tensor's name in both layouts, and whether its shape differs: the VAE attention's q, k, v and
// proj_out are 1×1 convolutions in the single file ([C,C,1,1]) and linear layers in diffusers
// ([C,C]).
struct SingleFileKey {
  SingleFileComponent component;
  std::string diffusers;  // within the component: "down_blocks.0.resnets.0.conv1.weight"
  std::string single;  // in the file: "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
  bool conv1x1 = false;
  // OpenCLIP's fused attention input: the single-file tensor is q, k and v stacked along dim 0.
  // to_single gives `part` 0, 1 or 2; to_diffusers gives part -1 and the q projection's name
  // (qkv_names gives all three).
  bool fused_qkv = false;
  int part = -1;
  // SDXL's text_projection: the file holds the transpose of the linear layer's weight.
  bool transposed = false;
};

// The q, k and v projections' names for a fused key's q name ("...self_attn.q_proj.weight").
std::vector<std::string> qkv_names(const std::string& q_name);

// What the names depend on, from the components' configs.
struct SingleFileLayout {
  std::vector<int64_t> layers_per_block;           // UNet, per level
  std::vector<bool> down_attention, up_attention;  // UNet levels with transformers
  int64_t vae_levels = 0, vae_layers_per_block = 0;
  // SD 2.x's text encoder is OpenCLIP's ViT-H (gelu); SD 1.x's CLIP ViT-L uses quick_gelu; SDXL
  // has both, the second with a projection.
  TextLayout text = TextLayout::Clip;
  // The OpenCLIP encoder's layers: SD 2.x files hold one more, which SD 2.x skips; SDXL's second
  // encoder keeps them all.
  int64_t text_layers = 0;
  bool addition_embedding = false;  // SDXL's UNet: add_embedding (text_time)

  // From unet/config.json, vae/config.json, text_encoder/config.json and, for SDXL,
  // text_encoder_2/config.json.
  static SingleFileLayout from_configs(const io::JsonConfig& unet, const io::JsonConfig& vae,
                                       const io::JsonConfig& text_encoder,
                                       const io::JsonConfig* text_encoder_2 = nullptr);
};

// The UNet's part of a layout, read from the UNet's module paths ("down_blocks.1.resnets.0",
// "down_blocks.1.attentions.0.proj_in", "add_embedding.linear_1", ...): to name a UNet's modules
// as the single file does without its config (kohya's SDXL LoRA files use those names).
SingleFileLayout unet_layout_from_modules(const std::vector<std::string>& module_paths);

class SingleFileKeys {
 public:
  explicit SingleFileKeys(const SingleFileLayout& layout);

  // The single-file name of a component's key; nullopt when the table has no module for it.
  std::optional<SingleFileKey> to_single(SingleFileComponent component,
                                         const std::string& diffusers_key) const;
  // The component and diffusers name of a single file's key; nullopt for keys that belong to no
  // component (EMA copies, the noise schedule's buffers, OpenCLIP's extras, ...).
  std::optional<SingleFileKey> to_diffusers(const std::string& single_key) const;
  // A UNet module's path in the single file without "model.diffusion_model."
  // ("down_blocks.1.attentions.0.proj_in" -> "input_blocks.4.1.proj_in"); nullopt when the table
  // has none.
  std::optional<std::string> unet_module_to_single(const std::string& module_path) const;

 private:
  enum class Leaves { Same, UnetResnet, VaeResnet, VaeAttention };
  struct Prefix {
    SingleFileComponent component;
    std::string diffusers, single;
    Leaves leaves;
  };
  std::vector<Prefix> prefixes_;
  TextLayout text_;
  int64_t text_layers_;
};

// "unet", "vae", "text_encoder", "text_encoder_2".
const char* component_name(SingleFileComponent component);

// Which component a single file's key belongs to, by its prefix alone (no config needed);
// nullopt for the rest (EMA copies, schedule buffers, ...).
std::optional<SingleFileComponent> single_file_component(const std::string& key);
// The text encoders' layout that a single file's keys show; nullopt without a text encoder.
std::optional<TextLayout> single_file_text_layout(const std::vector<std::string>& keys);

}  // namespace sdtune::formats
