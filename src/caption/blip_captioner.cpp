#include "sdtune/caption/blip_captioner.h"

#include <c10/core/InferenceMode.h>

#include "sdtune/error.h"
#include "sdtune/io/json_config.h"

namespace sdtune::caption {
namespace fs = std::filesystem;

BlipImageProcessor BlipImageProcessor::load(const fs::path& dir) {
  BlipImageProcessor p;
  // Published folders have preprocessor_config.json; transformers 5 writes processor_config.json
  // with the image processor's settings under "image_processor".
  fs::path file = dir / "preprocessor_config.json";
  nlohmann::json json;
  if (fs::exists(file)) {
    json = io::JsonConfig::load(file).json();
  } else if (fs::exists(dir / "processor_config.json")) {
    file = dir / "processor_config.json";
    const auto all = io::JsonConfig::load(file).json();
    if (all.contains("image_processor") && all["image_processor"].is_object())
      json = all["image_processor"];
  }
  if (!json.is_object()) return p;
  if (json.contains("size") && json["size"].is_object()) {
    p.height = json["size"].value("height", p.height);
    p.width = json["size"].value("width", p.width);
  }
  for (auto [key, values] :
       {std::pair<const char*, std::vector<float>*>{"image_mean", &p.mean}, {"image_std", &p.std}})
    if (json.contains(key)) {
      if (!json[key].is_array() || json[key].size() != 3)
        throw Error("expected three numbers", file.string(), key);
      *values = json[key].get<std::vector<float>>();
    }
  if (json.value("resample", 3) != 3)
    throw Error("only bicubic resizing (resample 3) is implemented", file.string(), "resample");
  for (const char* key : {"do_resize", "do_rescale", "do_normalize"})
    if (!json.value(key, true))
      throw Error("only the default processing (resize, rescale, normalize) is implemented",
                  file.string(), key);
  if (p.height < 1 || p.width < 1) throw Error("size must be positive", file.string(), "size");
  return p;
}

at::Tensor BlipImageProcessor::operator()(const std::vector<at::Tensor>& images) const {
  std::vector<at::Tensor> out;
  // The fused rescale-and-normalize: (x - 255·mean) / (255·std), in float32.
  const at::Tensor m = at::tensor(mean, at::kFloat).mul(255.0f).view({3, 1, 1});
  const at::Tensor s = at::tensor(std, at::kFloat).mul(255.0f).view({3, 1, 1});
  for (const at::Tensor& rgb : images) {
    // torchvision resizes uint8 images natively on the CPU (ATen's 8-bit bicubic kernel with
    // antialiasing), and so does this: the result is 8-bit, as the processor's is.
    const at::Tensor x = at::_upsample_bicubic2d_aa(rgb.permute({2, 0, 1}).unsqueeze(0),
                                                    {height, width}, /*align_corners=*/false);
    out.push_back((x.squeeze(0).to(at::kFloat) - m) / s);
  }
  return at::stack(out);
}

BlipCaptioner::BlipCaptioner(const fs::path& dir, c10::Device device, at::ScalarType dtype)
    : model_(models::load_blip(dir)),
      tokenizer_(text::BertTokenizer::load(dir)),
      processor_(BlipImageProcessor::load(dir)),
      device_(device),
      dtype_(dtype) {
  model_->to(device, dtype);
}

std::vector<std::string> BlipCaptioner::caption(const std::vector<at::Tensor>& images,
                                                const std::string& prompt,
                                                const BlipDecoding& decoding) const {
  const c10::InferenceMode inference;
  const at::Tensor pixels = processor_(images).to(device_, dtype_);
  const std::vector<int64_t> prompt_ids = tokenizer_.encode(prompt);
  const int64_t B = pixels.size(0), L = static_cast<int64_t>(prompt_ids.size());
  const at::Tensor ids = at::tensor(prompt_ids, at::kLong).view({1, L}).expand({B, L}).to(device_);
  auto model = model_;
  const at::Tensor out = blip_generate(model, pixels, ids, decoding).to(at::kCPU);
  std::vector<std::string> captions;
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor row = out[b].contiguous();
    captions.push_back(tokenizer_.decode(
        std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel())));
  }
  return captions;
}

}  // namespace sdtune::caption
