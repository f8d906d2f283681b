#include "sdtune/serve/generation_request.h"

#include <cmath>

#include "sdtune/error.h"
#include "sdtune/io/image.h"

namespace sdtune::serve {
namespace {

using json = nlohmann::json;

[[noreturn]] void invalid(const std::string& field, const std::string& what) {
  throw RequestError(422, field + ": " + what);
}

// An integer field: a JSON integer, or a float with an integral value (as pydantic takes it).
int64_t integer(const json& body, const char* field, int64_t fallback) {
  if (!body.contains(field) || body[field].is_null()) return fallback;
  const json& v = body[field];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15)
      return static_cast<int64_t>(d);
  }
  invalid(field, "expected an integer, got " + v.dump().substr(0, 40));
}

double number(const json& body, const char* field, double fallback) {
  if (!body.contains(field) || body[field].is_null()) return fallback;
  const json& v = body[field];
  if (!v.is_number() || !std::isfinite(v.get<double>()))
    invalid(field, "expected a finite number, got " + v.dump().substr(0, 40));
  return v.get<double>();
}

std::string text(const json& body, const char* field, const std::string& fallback) {
  if (!body.contains(field) || body[field].is_null()) return fallback;
  if (!body[field].is_string()) invalid(field, "expected a string");
  std::string s = body[field].get<std::string>();
  // CLIP reads 77 tokens; a prompt of more than this is no prompt.
  if (s.size() > 64 * 1024) invalid(field, "longer than 64 KiB");
  return s;
}

void in_range(const char* field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    invalid(field, std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "]");
}

at::Tensor decode_image(const json& images, int64_t max_pixels) {
  if (!images.is_array() || images.empty() || !images[0].is_string())
    invalid("init_images", "expected a list with one base64 image");
  std::string data = images[0].get<std::string>();
  // A data URL's header ("data:image/png;base64,"), as A1111 accepts.
  if (data.rfind("data:", 0) == 0) {
    const size_t comma = data.find(',');
    if (comma == std::string::npos) invalid("init_images", "a data URL without data");
    data.erase(0, comma + 1);
  }
  std::string bytes;
  try {
    bytes = io::base64_decode(data);
  } catch (const Error&) {
    invalid("init_images", "not base64");
  }
  try {
    return io::read_image_rgb(bytes.data(), bytes.size(), "init_images[0]", max_pixels);
  } catch (const Error& e) {
    invalid("init_images", e.message());
  }
}

}  // namespace

std::string take_lora_tags(const std::string& prompt,
                           std::vector<std::pair<std::string, double>>& loras) {
  // A plain scan rather than std::regex, whose recursion a long prompt could overflow.
  static const std::string open = "<lora:";
  std::string out;
  size_t at = 0;
  while (true) {
    const size_t start = prompt.find(open, at);
    const size_t close = start == std::string::npos ? start : prompt.find('>', start);
    if (close == std::string::npos) break;
    const std::string inside = prompt.substr(start + open.size(), close - start - open.size());
    if (inside.find('<') != std::string::npos) {  // "<lora:<lora:x>": the inner one is the tag
      out.append(prompt, at, start + 1 - at);
      at = start + 1;
      continue;
    }
    const size_t colon = inside.find(':');
    std::string name = inside.substr(0, colon);
    double scale = 1.0;
    if (colon != std::string::npos && colon + 1 < inside.size()) {
      const std::string s = inside.substr(colon + 1);
      char* stop = nullptr;
      scale = std::strtod(s.c_str(), &stop);
      if (stop == s.c_str() || *stop != '\0' || !std::isfinite(scale))
        invalid("prompt", "the LoRA tag <lora:" + inside + "> has no number for its scale");
    }
    if (name.empty()) invalid("prompt", "a LoRA tag without a name");
    loras.emplace_back(std::move(name), scale);
    out.append(prompt, at, start - at);
    at = close + 1;
  }
  out.append(prompt, at, std::string::npos);
  return out;
}

GenerationRequest parse_generation_request(const json& body, bool img2img,
                                           const ServeLimits& limits) {
  if (!body.is_object()) throw RequestError(422, "the body must be a JSON object");
  GenerationRequest r;
  r.img2img = img2img;
  r.prompt = take_lora_tags(text(body, "prompt", ""), r.loras);
  r.negative_prompt = take_lora_tags(text(body, "negative_prompt", ""), r.loras);
  r.steps = integer(body, "steps", 50);
  in_range("steps", r.steps, 1, limits.max_steps);
  r.cfg_scale = number(body, "cfg_scale", 7.0);
  if (r.cfg_scale < 0 || r.cfg_scale > 100) invalid("cfg_scale", "outside [0, 100]");
  r.width = integer(body, "width", 512);
  r.height = integer(body, "height", 512);
  in_range("width", r.width, 8, limits.max_side);
  in_range("height", r.height, 8, limits.max_side);
  // A1111 rounds sizes down to the latent grid.
  r.width -= r.width % 8;
  r.height -= r.height % 8;
  if (r.width * r.height > limits.max_pixels)
    invalid("width", std::to_string(r.width) + "x" + std::to_string(r.height) +
                         " is over this server's limit of " + std::to_string(limits.max_pixels) +
                         " pixels");
  r.seed = integer(body, "seed", -1);
  in_range("seed", r.seed, -1, 0xFFFFFFFFLL);
  r.batch_size = integer(body, "batch_size", 1);
  r.n_iter = integer(body, "n_iter", 1);
  in_range("batch_size", r.batch_size, 1, limits.max_images);
  in_range("n_iter", r.n_iter, 1, limits.max_images);
  if (r.images() > limits.max_images)
    invalid("batch_size", "batch_size × n_iter = " + std::to_string(r.images()) +
                              " is over this server's limit of " +
                              std::to_string(limits.max_images));
  r.sampler = text(body, "sampler_name", text(body, "sampler_index", "Euler"));
  try {
    r.scheduler = choose_scheduler(r.sampler, text(body, "scheduler", ""));
  } catch (const Error& e) {
    invalid("sampler_name", e.message());
  }
  r.eta = number(body, "eta", 0.0);
  if (r.eta < 0 || r.eta > 1) invalid("eta", "outside [0, 1]");
  if (body.contains("override_settings") && !body["override_settings"].is_null()) {
    const json& o = body["override_settings"];
    if (!o.is_object()) invalid("override_settings", "expected an object");
    r.model = text(o, "sd_model_checkpoint", "");
    const int64_t stop = integer(o, "CLIP_stop_at_last_layers", 1);
    in_range("CLIP_stop_at_last_layers", stop, 1, 12);
    r.clip_skip = stop - 1;
  }
  if (img2img) {
    r.denoising_strength = number(body, "denoising_strength", 0.75);
    if (r.denoising_strength <= 0 || r.denoising_strength > 1)
      invalid("denoising_strength", "outside (0, 1]");
    if (!body.contains("init_images")) invalid("init_images", "missing");
    at::Tensor image = decode_image(body["init_images"], limits.max_pixels * 4);
    if (image.size(0) != r.height || image.size(1) != r.width)
      image = io::resize_image(image, r.width, r.height);
    r.init_image = image;
  }
  r.echo = body;
  if (r.echo.contains("init_images")) r.echo.erase("init_images");
  return r;
}

}  // namespace sdtune::serve
