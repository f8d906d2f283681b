#include "sdtune/pipeline/generation_parameters.h"

#include <cstdio>

namespace sdtune::pipeline {

std::string settings_line(const GenerationSettings& s) {
  std::string line = "Steps: " + std::to_string(s.steps);
  const auto add = [&line](const std::string& key, const std::string& value) {
    line += ", " + key + ": " + value;
  };
  if (!s.sampler.empty()) add("Sampler", s.sampler);
  if (s.cfg_scale) {
    char cfg[32];
    std::snprintf(cfg, sizeof cfg, "%g", *s.cfg_scale);
    add("CFG scale", cfg);
  }
  add("Seed", std::to_string(s.seed));
  if (s.width > 0 && s.height > 0)
    add("Size", std::to_string(s.width) + "x" + std::to_string(s.height));
  if (!s.model.empty()) add("Model", s.model);
  if (s.clip_skip > 0) add("Clip skip", std::to_string(s.clip_skip + 1));
  if (s.denoising_strength)
    add("Denoising strength", std::to_string(*s.denoising_strength).substr(0, 4));
  if (s.batch_size > 1) {
    add("Batch size", std::to_string(s.batch_size));
    add("Batch pos", std::to_string(s.batch_pos));
  }
  for (const auto& [key, value] : s.extra) add(key, value);
  return line;
}

std::string parameters_text(const std::string& prompt, const std::string& negative_prompt,
                            const GenerationSettings& s) {
  std::string text = prompt + "\n";
  if (!negative_prompt.empty()) text += "Negative prompt: " + negative_prompt + "\n";
  return text + settings_line(s);
}

}  // namespace sdtune::pipeline
