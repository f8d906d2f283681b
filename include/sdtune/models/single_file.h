#pragma once
// Single-file Stable Diffusion checkpoints (A1111/ComfyUI style: one .safetensors with the UNet,
// VAE and text encoder under their original CompVis names; formats/single_file_keys.h) to and
// from diffusers pipeline folders: SD 1.x (CLIP ViT-L text encoder) and SD 2.x (OpenCLIP ViT-H).
#include <filesystem>
#include <optional>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"

namespace sdtune::models {

// An Error when the folder's pipeline has no single-file layout here (configs that do not parse
// into one): checked before a training run that is to write one.
void check_single_file_writable(const io::ModelFolder& folder);

// Writes the folder's UNet, VAE and text encoder as one single-file checkpoint at `out`
// (atomically). Tensors are written in their stored dtype (no copy: straight from the mapped
// files) or, with `dtype`, floating-point ones converted to it. A key the layout has no name for
// is an Error naming it.
void write_single_file(const io::ModelFolder& folder, const std::filesystem::path& out,
                       std::optional<at::ScalarType> dtype = std::nullopt);

struct SingleFileReport {
  int64_t tensors = 0;  // taken into the folder
  int64_t ignored = 0;  // keys of no component (EMA copies, schedule buffers, ...)
};

// Writes the single file's components as a diffusers pipeline folder at `out`, which must not
// exist. `config` supplies model_index.json, the components' configs, the tokenizer and the
// scheduler (its weights are not read). With `ema_weights` the UNet is the file's EMA copy
// (CompVis's model_ema.*, names flattened: "model_ema.diffusion_modelinput_blocks00weight"),
// every tensor of which must be there. The result is loaded back strictly before this returns:
// a missing or misshapen tensor is an Error naming it, and `out` is then removed.
SingleFileReport read_single_file(const std::filesystem::path& file, const io::ModelFolder& config,
                                  const std::filesystem::path& out,
                                  std::optional<at::ScalarType> dtype = std::nullopt,
                                  bool ema_weights = false);

}  // namespace sdtune::models
