#pragma once
// The diffusers configs that a single-file checkpoint implies. A1111/ComfyUI files carry weights
// only: the architecture is read from the tensors' names and shapes (levels, layers, channels,
// attention, projections, text encoder), and what shapes cannot tell follows the published SD 1.x
// and SD 2.x configs:
// - attention heads: SD 1.x's UNet has 8 per block; SD 2.x's UNet and both text encoders use
//   heads 64 wide;
// - 32 groups in every GroupNorm, VAE scaling factor 0.18215, the scaled-linear noise schedule;
// - prediction type: SD 1.x predicts the noise; SD 2.x files are taken as the 768-v models
//   (v-prediction, as diffusers does), unless told otherwise (the 512-base models predict noise)
//   by --prediction-type or by the LDM config A1111 keeps beside the file.
// - SDXL (the base's layout: conditioner.embedders.0/1): heads 64 wide, 1024² images, the VAE
//   scaled by 0.13025 and upcast in fp16, Euler discrete; the time-id embedding's width is what
//   label_emb's input leaves beside the pooled text.
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sdtune::formats {

struct SingleFileConfigs {
  std::string architecture;  // "SD 1.x", "SD 2.x" or "SDXL"
  nlohmann::json model_index, unet, vae, text_encoder, scheduler;
  nlohmann::json tokenizer_config, special_tokens_map;  // vocab and merges: text/clip_vocabulary
  // SDXL's second text encoder and tokenizer; null otherwise.
  nlohmann::json text_encoder_2, tokenizer_2_config, special_tokens_map_2;
};

// `shapes`: every tensor of the file by name. `prediction_type`: "epsilon", "v_prediction" or ""
// (the architecture's default, or the LDM config's). `ldm`: the original LDM config of the file
// (A1111's sidecar MODEL.yaml, io/yaml_document.h) or null; its parameterization, latent image
// size, heads (num_heads / num_head_channels) and scale factor replace SD's defaults. Errors name
// `source` and the key that does not fit: a component missing, levels of unequal channels, a UNet
// of another kind (class-conditioned, the SDXL refiner), a width that is no multiple of the heads'
// width.
SingleFileConfigs infer_single_file_configs(
    const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& prediction_type,
    const std::string& source, const nlohmann::json* ldm = nullptr);

}  // namespace sdtune::formats
