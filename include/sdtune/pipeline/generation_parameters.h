#pragma once
// A generated image's "parameters" text in AUTOMATIC1111's layout, which A1111-compatible tools
// (the PNG Info tab, ComfyUI, civitai) read: the prompt, an optional "Negative prompt: ..." line,
// then one line of "Key: value" settings. The one writer of it, for `generate`, `grid`,
// validation images and class images alike.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sdtune::pipeline {

// The settings line: "Steps: 30, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 512x512,
// Model: NAME, Clip skip: 2, Denoising strength: 0.60, Batch size: 4, Batch pos: 0", then
// `extra`. A field left empty (or zero) is left out.
struct GenerationSettings {
  int64_t steps = 0;
  std::string sampler;  // scheduler's A1111 label (schedulers::sampler_label)
  std::optional<double> cfg_scale;
  uint64_t seed = 0;
  int64_t width = 0, height = 0;  // Size
  std::string model;
  int64_t clip_skip = 0;  // layers skipped; A1111 counts from 1 (= the last layer)
  std::optional<double> denoising_strength;                // img2img
  int64_t batch_size = 1, batch_pos = 0;                   // written when batch_size > 1
  std::vector<std::pair<std::string, std::string>> extra;  // e.g. {"Training step", "500"}
};

std::string settings_line(const GenerationSettings& s);

// prompt, "\nNegative prompt: NEG" when there is one, then "\n" + the settings line.
std::string parameters_text(const std::string& prompt, const std::string& negative_prompt,
                            const GenerationSettings& s);

}  // namespace sdtune::pipeline
