#include "sdtune/models/component_loader.h"

#include "sdtune/error.h"
#include "sdtune/formats/clip_text_keys.h"
#include "sdtune/io/state_dict.h"

namespace sdtune::models {
namespace {

// Parameters created while this lives are of `dtype` (at::empty and friends follow the default
// dtype): a module built for bf16 is never held in float32 first, which would double what loading
// it costs.
class DefaultDtype {
 public:
  explicit DefaultDtype(at::ScalarType dtype) : saved_(at::get_default_dtype()) {
    if (at::isFloatingType(dtype)) at::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
  }
  ~DefaultDtype() { at::set_default_dtype(saved_); }
  DefaultDtype(const DefaultDtype&) = delete;
  DefaultDtype& operator=(const DefaultDtype&) = delete;

 private:
  caffe2::TypeMeta saved_;
};

// Builds the module from its config (`make`) directly in the target dtype, loads its weights
// strictly (io::load_files_into: no second copy), moves it to the device and puts it in eval mode
// (no dropout).
template <typename Make>
auto load_component(const io::ModelFolder& folder, const std::string& name, Make make,
                    const LoadOptions& options, const std::vector<std::string>& ignored = {},
                    io::StateDict (*convert_keys)(io::StateDict) = nullptr) {
  auto module = [&] {
    const DefaultDtype dtype(options.dtype);
    return make();
  }();
  io::load_files_into(*module, io::find_weight_files(folder.component_dir(name), options.variant),
                      (folder.root() / name).string(), ignored, convert_keys);
  module->to(options.device, options.dtype);
  module->eval();
  return module;
}

}  // namespace

UNet2DConditionModel load_unet(const io::ModelFolder& folder, const LoadOptions& options) {
  auto config = UNet2DConditionConfig::from_json(folder.component_config("unet"));
  return load_component(
      folder, "unet", [&] { return UNet2DConditionModel(config); }, options);
}

AutoencoderKL load_vae(const io::ModelFolder& folder, const LoadOptions& options) {
  auto config = AutoencoderKLConfig::from_json(folder.component_config("vae"));
  return load_component(
      folder, "vae", [&] { return AutoencoderKL(config); }, options);
}

CLIPTextModel load_text_encoder(const io::ModelFolder& folder, const LoadOptions& options,
                                const std::string& component) {
  auto config = CLIPTextConfig::from_json(folder.component_config(component));
  return load_component(
      folder, component, [&] { return CLIPTextModel(config); }, options,
      formats::clip_text_ignored_keys(), formats::canonical_clip_text_keys);
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return c10::kFloat;
  if (name == "fp16" || name == "float16") return c10::kHalf;
  if (name == "bf16" || name == "bfloat16") return c10::kBFloat16;
  throw Error("unknown dtype '" + name + "' (expected fp32, fp16 or bf16)");
}

}  // namespace sdtune::models
