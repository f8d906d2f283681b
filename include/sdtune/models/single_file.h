#pragma once
// Single-file Stable Diffusion checkpoints (A1111/ComfyUI style: one .safetensors with the UNet,
// VAE and text encoder under their original CompVis names; formats/single_file_keys.h) to and
// from diffusers pipeline folders: SD 1.x (CLIP ViT-L text encoder), SD 2.x (OpenCLIP ViT-H) and
// SDXL (both: CLIP ViT-L and OpenCLIP ViT-bigG with its projection).
#include <filesystem>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"

namespace sdtune::models {

// An Error when the folder's pipeline has no single-file layout here (configs that do not parse
// into one): checked before a training run that is to write one.
void check_single_file_writable(const io::ModelFolder& folder);

// Writes the folder's UNet, VAE and text encoder(s) as one single-file checkpoint at `out`
// (atomically). Tensors are written in their stored dtype (no copy: straight from the mapped
// files) or, with `dtype`, floating-point ones converted to it. A key the layout has no name for
// is an Error naming it.
void write_single_file(const io::ModelFolder& folder, const std::filesystem::path& out,
                       std::optional<at::ScalarType> dtype = std::nullopt);

struct SingleFileReport {
  int64_t tensors = 0;       // taken into the folder
  int64_t ignored = 0;       // keys of no component (EMA copies, schedule buffers, ...)
  std::string architecture;  // "SD 1.x", "SD 2.x" or "SDXL"
  // Where the configs came from: --config's folder, the sidecar MODEL.yaml, or "" (SD's own).
  std::string configs_from;
};

// How a single file becomes a pipeline. Files carry weights only; the rest comes from `config`,
// or, without one, from the tensors and sdtune's own SD 1.x/2.x/XL configs, tokenizer and scheduler
// (formats/single_file_configs.h, text/clip_vocabulary.h), with the settings of the original LDM
// config where A1111 keeps one beside the file (MODEL.yaml for MODEL.safetensors).
struct SingleFileOptions {
  // A diffusers folder of the same architecture: its configs, tokenizer and scheduler (its weights
  // are not read). Empty: inferred.
  std::filesystem::path config;
  // Without `config`: "epsilon", "v_prediction", or "" for the architecture's default (SD 2.x:
  // v-prediction, the 768-v models).
  std::string prediction_type;
  // The UNet from the file's EMA copy (CompVis's model_ema.*, names flattened:
  // "model_ema.diffusion_modelinput_blocks00weight"), every tensor of which must be there.
  bool ema_weights = false;
};

// Writes the single file's components as a diffusers pipeline folder at `out`, which must not
// exist. The file is a .safetensors, or a PyTorch pickle (.ckpt, .pt, .pth) read without running
// it (io/pickle_checkpoint.h). The result is loaded back strictly before this returns: a missing
// or misshapen tensor is an Error naming it, and `out` is then removed.
SingleFileReport read_single_file(const std::filesystem::path& file,
                                  const std::filesystem::path& out,
                                  const SingleFileOptions& options = {},
                                  std::optional<at::ScalarType> dtype = std::nullopt);

// The model at `path`: a diffusers folder as it is, or a single file read once into a folder in
// the cache (io::default_cache_dir()/single-file/, keyed by the file's path, size and time and by
// `options`) and reused from there: --model of every command takes either.
io::ModelFolder open_model(const std::filesystem::path& path,
                           const SingleFileOptions& options = {});

}  // namespace sdtune::models
