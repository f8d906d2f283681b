#pragma once
// Writing a trained model as a complete diffusers pipeline folder, loadable with
// StableDiffusionPipeline.from_pretrained(dir): the output of training and of each checkpoint.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "sdtune/io/model_folder.h"

namespace sdtune::io {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// New weights per component; a component left empty is copied from the base folder unchanged.
// Keys are the modules' state-dict names (text encoder: transformers 4's "text_model.…", which
// transformers 4 and 5 both load).
struct SavedWeights {
  std::optional<NamedTensors> unet;
  std::optional<NamedTensors> text_encoder;
  std::optional<NamedTensors> text_encoder_2;  // SDXL
  std::optional<NamedTensors> vae;
  // Floating-point tensors of the new weights are written in this dtype (fp16/bf16 halve the size
  // of an inference export); copied components keep the base's files as they are.
  at::ScalarType save_dtype = at::kFloat;
  // Keys set in a rewritten component's config.json, by component (e.g. the VAE's scaling_factor
  // after VAE training).
  std::map<std::string, nlohmann::json> config_updates;
};

// Fills `dir`, an empty folder, with the pipeline that save_pipeline describes, in place (not
// atomically: for a folder that is itself published atomically, e.g. a checkpoint).
void write_pipeline_folder(const ModelFolder& base, const std::filesystem::path& dir,
                           const SavedWeights& weights);

// Writes `out` as a pipeline folder: model_index.json and every component folder it names are
// copied from `base` byte for byte, except that a component with new weights gets the base's
// config.json (training does not change the architecture; config_updates set keys in it) and its
// weights as one safetensors file (diffusion_pytorch_model.safetensors; text_encoder:
// model.safetensors) with metadata
// {"format": "pt"}, which transformers requires.
//
// Atomic (io::publish_folder): everything is written to the sibling `<out>.tmp-<pid>`, which then
// replaces `out` by renames (an existing `out` is moved aside to `<out>.old-<pid>` and removed
// last), so a crash at any moment leaves either the old or the new folder complete. On failure
// `out` is untouched and the temporary folder removed; the Error names the path at fault.
void save_pipeline(const ModelFolder& base, const std::filesystem::path& out,
                   const SavedWeights& weights);

}  // namespace sdtune::io
