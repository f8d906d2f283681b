#pragma once
// Loading the components of a Stable Diffusion pipeline folder (diffusers layout) into sdtune's
// models: config.json -> module, safetensors weights -> parameters, checked key by key.
#include <filesystem>
#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "sdtune/io/model_folder.h"
#include "sdtune/models/autoencoder_kl.h"
#include "sdtune/models/clip_text_model.h"
#include "sdtune/models/unet_2d_condition.h"

namespace sdtune::models {

struct LoadOptions {
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;
  std::string variant;  // "fp16" selects *.fp16.safetensors
};

UNet2DConditionModel load_unet(const io::ModelFolder& folder, const LoadOptions& options = {});
AutoencoderKL load_vae(const io::ModelFolder& folder, const LoadOptions& options = {});
// `component`: "text_encoder", or SDXL's "text_encoder_2" (CLIPTextModelWithProjection).
CLIPTextModel load_text_encoder(const io::ModelFolder& folder, const LoadOptions& options = {},
                                const std::string& component = "text_encoder");

// Parses "fp32" / "fp16" / "bf16"; an Error otherwise.
c10::ScalarType parse_dtype(const std::string& name);

}  // namespace sdtune::models
