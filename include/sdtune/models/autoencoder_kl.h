#pragma once
// AutoencoderKL: SD's VAE. Images in [-1,1] <-> latents; the UNet works on
// latents · scaling_factor (0.18215 for SD 1.x/2.x).
#include <optional>

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>

#include "sdtune/io/json_config.h"
#include "sdtune/models/vae.h"

namespace sdtune::models {

struct AutoencoderKLConfig {
  VaeOptions vae;
  double scaling_factor = 0.18215;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  // SDXL's VAE overflows in fp16: a pipeline loaded in fp16 runs it in fp32 (as diffusers'
  // upcast_vae does).
  bool force_upcast = false;

  // Reads vae/config.json; block types other than DownEncoderBlock2D/UpDecoderBlock2D are an Error.
  static AutoencoderKLConfig from_json(const io::JsonConfig& json);
};

// The encoder's posterior N(mean, exp(logvar)), per latent element.
struct DiagonalGaussian {
  at::Tensor mean, logvar;  // [B,latent,h,w]; logvar clamped to [-30, 20] as diffusers does
  at::Tensor std() const;
  // mean + std · ε, ε ~ N(0,1) drawn from `generator` (the default one when absent) on the
  // generator's device in mean's dtype, in one randn call of mean's shape, as diffusers draws it.
  at::Tensor sample(std::optional<at::Generator> generator = std::nullopt) const;
};

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // image [B,3,H,W] in [-1,1] -> posterior over unscaled latents [B,4,H/8,W/8]
  DiagonalGaussian encode(const at::Tensor& image);
  // unscaled latents (what diffusers' vae.decode receives) -> image [B,3,H,W], nominally [-1,1]
  at::Tensor decode(const at::Tensor& latents);

  AutoencoderKLConfig config;
  Encoder encoder{nullptr};
  Decoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

}  // namespace sdtune::models
