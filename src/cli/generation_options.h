#pragma once
// The options `generate` and `grid` share: sampling settings, scheduler, device and precision.
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"
#include "sdtune/pipeline/generation_parameters.h"
#include "sdtune/pipeline/stable_diffusion_pipeline.h"

namespace sdtune::cli {

struct GenerationFlags {
  pipeline::GenerateOptions gen;
  std::string scheduler, device = "cpu", dtype = "fp32";
  bool karras = false, quiet = false;
  bool cuda_graph = false;                 // the denoising loop's UNet replayed from CUDA graphs
  bool channels_last = false;              // the UNet's and VAE's convolutions in NHWC
  std::string attention_backend = "auto";  // models/attention_backend.h
  std::vector<std::string> loras;          // --lora FILE[:SCALE], repeatable
  models::SingleFileOptions model_file;  // --prediction-type, --ema-weights: a single-file --model
};

// Registers --negative-prompt, SDXL's --prompt-2, --negative-prompt-2 and size/crop conditioning,
// --steps, --guidance-scale, --scheduler, --karras, --eta, --width,
// --height, --clip-skip, --device, --dtype, --quiet and, for a single-file --model,
// --prediction-type and --ema-weights on `cmd`.
void add_generation_options(CLI::App* cmd, GenerationFlags& flags);

// --prediction-type (unless the command has its own) and --ema-weights: how a single-file --model
// becomes a pipeline (models::open_model).
void add_single_file_options(CLI::App* cmd, models::SingleFileOptions& options,
                             bool with_prediction_type = true);

// The pipeline's models a --lora file may change: "unet", "text_encoder" and, for SDXL,
// "text_encoder_2".
std::map<std::string, torch::nn::Module*> lora_targets(pipeline::StableDiffusionPipeline& pipe);

// Device and dtype from the flags; an Error for fp16 on the CPU, --cuda-graph off CUDA, and sizes
// not a multiple of 8.
models::LoadOptions checked_load_options(const GenerationFlags& flags);

// --channels-last and --cuda-graph on a pipeline just loaded (after --lora merges).
void apply_speed_options(pipeline::StableDiffusionPipeline& pipe, const GenerationFlags& flags);

// The settings of A1111's "parameters" text for images made with these flags by `pipe`:
// steps, sampler, CFG scale, seed, size, model and clip skip.
pipeline::GenerationSettings generation_settings(const GenerationFlags& flags,
                                                 const pipeline::StableDiffusionPipeline& pipe,
                                                 int64_t width, int64_t height,
                                                 const std::string& model);

}  // namespace sdtune::cli
