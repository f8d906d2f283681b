#pragma once
// Key names of single-file Stable Diffusion checkpoints (the original CompVis/Stability layout
// that A1111 and ComfyUI load and share) against diffusers' per-component names. One table of
// module prefixes, built from the components' configs, serves both directions, so that a file
// written from a folder reads back to the same keys.
//
//   UNet          model.diffusion_model.  input_blocks.I.J / middle_block.J / output_blocks.I.J
//   VAE           first_stage_model.      encoder.down.I.block.J, decoder.up.I (reversed),
//   mid.attn_1 text (SD 1.x) cond_stage_model.transformer.text_model.  (transformers' CLIPTextModel
//   names)
#include <optional>
#include <string>
#include <vector>

#include "sdtune/models/autoencoder_kl.h"
#include "sdtune/models/unet_2d_condition.h"

namespace sdtune::formats {

enum class SingleFileComponent { Unet, Vae, TextEncoder };

// A tensor's name in both layouts, and whether its shape differs: the VAE attention's q, k, v and
// proj_out are 1×1 convolutions in the single file ([C,C,1,1]) and linear layers in diffusers
// ([C,C]).
struct SingleFileKey {
  SingleFileComponent component;
  std::string diffusers;  // within the component: "down_blocks.0.resnets.0.conv1.weight"
  std::string single;  // in the file: "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
  bool conv1x1 = false;
};

class SingleFileKeys {
 public:
  SingleFileKeys(const models::UNet2DConditionConfig& unet, const models::VaeOptions& vae);

  // The single-file name of a component's key; nullopt when the table has no module for it.
  std::optional<SingleFileKey> to_single(SingleFileComponent component,
                                         const std::string& diffusers_key) const;
  // The component and diffusers name of a single file's key; nullopt for keys that belong to no
  // component (EMA copies, the noise schedule's buffers, OpenCLIP's extras, ...).
  std::optional<SingleFileKey> to_diffusers(const std::string& single_key) const;

 private:
  enum class Leaves { Same, UnetResnet, VaeResnet, VaeAttention };
  struct Prefix {
    SingleFileComponent component;
    std::string diffusers, single;
    Leaves leaves;
  };
  std::vector<Prefix> prefixes_;
};

const char* component_name(SingleFileComponent component);  // "unet", "vae", "text_encoder"

}  // namespace sdtune::formats
