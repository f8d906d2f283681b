#pragma once
// Validation images during training: the validation prompts drawn with the weights as they are,
// written with a grid to logs/validation/step-STEP/, as diffusers' log_validation does.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"
#include "sdtune/models/component_loader.h"

namespace sdtune::train {

struct Validation {
  std::vector<std::string> prompts;
  int64_t images_per_prompt = 1, steps = 20;
  double guidance = 7.5;
  uint64_t seed = 0;
};

// Generates the validation images with the weights as they are now and writes them, and a grid
// (a row per prompt), to DIR/step-STEP/. Returns the grid.
at::Tensor run_validation(const io::ModelFolder& base, const models::LoadOptions& load,
                          models::CLIPTextModel text_encoder, models::CLIPTextModel text_encoder_2,
                          models::UNet2DConditionModel unet, models::AutoencoderKL vae,
                          const Validation& v, std::optional<at::ScalarType> amp,
                          const std::filesystem::path& dir, int64_t step);

}  // namespace sdtune::train
