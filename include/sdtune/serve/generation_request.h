#pragma once
// A generation request of AUTOMATIC1111's API (POST /sdapi/v1/txt2img and /img2img), read from
// its JSON body with A1111's field names, defaults and semantics, and checked against the
// server's limits. Anything malformed is a RequestError with the HTTP status to answer (422, as
// A1111's FastAPI validation does) and a message naming the field.
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "sdtune/serve/sampler_names.h"

namespace sdtune::serve {

class RequestError : public std::runtime_error {
 public:
  RequestError(int status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// What one request may ask for: each cap refuses (422) rather than clamps.
struct ServeLimits {
  int64_t max_pixels = 1024 * 1024;  // width × height
  int64_t max_side = 2048;           // width, height
  int64_t max_steps = 150;
  int64_t max_images = 8;  // batch_size × n_iter
};

struct GenerationRequest {
  bool img2img = false;
  std::string prompt, negative_prompt;  // with A1111's <lora:NAME:SCALE> tags taken out
  std::vector<std::pair<std::string, double>> loras;  // NAME, SCALE, in prompt order
  int64_t steps = 50;
  double cfg_scale = 7.0;
  int64_t width = 512, height = 512;  // rounded down to multiples of 8
  int64_t seed = -1;                  // -1: a random one, reported in the answer's info
  int64_t batch_size = 1, n_iter = 1;
  std::string sampler = "Euler";  // A1111's default sampler_index
  SchedulerChoice scheduler;
  std::string model;      // override_settings.sd_model_checkpoint; "" = the current model
  int64_t clip_skip = 0;  // override_settings.CLIP_stop_at_last_layers − 1
  double eta = 0.0;       // DDIM's
  std::optional<at::Tensor> init_image;  // img2img: uint8 [H,W,3], resized to width × height
  double denoising_strength = 0.75;
  nlohmann::json echo;  // the body as received (images left out): the answer's "parameters"

  int64_t images() const { return batch_size * n_iter; }
};

// Parses a body of /txt2img (img2img false) or /img2img. A decoded init image may have at most
// four times limits.max_pixels pixels (it is resized to width × height).
GenerationRequest parse_generation_request(const nlohmann::json& body, bool img2img,
                                           const ServeLimits& limits);

// Takes A1111's LoRA tags (<lora:NAME> or <lora:NAME:SCALE>) out of a prompt, appending (NAME,
// SCALE) to `loras`; the prompt is left as A1111 leaves it (the tag's text removed).
std::string take_lora_tags(const std::string& prompt,
                           std::vector<std::pair<std::string, double>>& loras);

}  // namespace sdtune::serve
