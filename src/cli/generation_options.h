#pragma once
// The options `generate` and `grid` share: sampling settings, scheduler, device and precision.
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "sdtune/models/component_loader.h"
#include "sdtune/pipeline/generation_parameters.h"
#include "sdtune/pipeline/stable_diffusion_pipeline.h"

namespace sdtune::cli {

struct GenerationFlags {
  pipeline::GenerateOptions gen;
  std::string scheduler, device = "cpu", dtype = "fp32";
  bool karras = false, quiet = false;
  std::vector<std::string> loras;  // --lora FILE[:SCALE], repeatable
};

// Registers --negative-prompt, --steps, --guidance-scale, --scheduler, --karras, --eta, --width,
// --height, --clip-skip, --device, --dtype and --quiet on `cmd`.
void add_generation_options(CLI::App* cmd, GenerationFlags& flags);

// Device and dtype from the flags; an Error for fp16 on the CPU and for sizes not a multiple of 8.
models::LoadOptions checked_load_options(const GenerationFlags& flags);

// The settings of A1111's "parameters" text for images made with these flags by `pipe`:
// steps, sampler, CFG scale, seed, size, model and clip skip.
pipeline::GenerationSettings generation_settings(const GenerationFlags& flags,
                                                 const pipeline::StableDiffusionPipeline& pipe,
                                                 int64_t width, int64_t height,
                                                 const std::string& model);

}  // namespace sdtune::cli
