#include "sdtune/models/autoencoder_kl.h"

#include "sdtune/error.h"

namespace sdtune::models {
namespace nn = torch::nn;

AutoencoderKLConfig AutoencoderKLConfig::from_json(const io::JsonConfig& j) {
  AutoencoderKLConfig c;
  VaeOptions& v = c.vae;
  v.in_channels = j.get_int("in_channels", 3);
  v.out_channels = j.get_int("out_channels", 3);
  v.latent_channels = j.get_int("latent_channels", 4);
  v.block_out_channels = j.get_int_list("block_out_channels");
  v.layers_per_block = j.get_int("layers_per_block", 1);
  v.norm_num_groups = j.get_int("norm_num_groups", 32);
  v.act = parse_activation(j.get_string("act_fn", "silu"));
  v.mid_block_add_attention = j.get_bool("mid_block_add_attention", true);
  const size_t n = v.block_out_channels.size();
  for (const char* key : {"down_block_types", "up_block_types"}) {
    if (!j.has(key)) continue;
    auto types = j.get_string_list(key);
    const std::string want =
        std::string(key) == "down_block_types" ? "DownEncoderBlock2D" : "UpDecoderBlock2D";
    if (types.size() != n)
      throw Error("expected one block type per block_out_channels entry", j.source(), key);
    for (const auto& t : types)
      if (t != want) throw Error("unsupported block type '" + t + "'", j.source(), key);
  }
  c.scaling_factor = j.get_double("scaling_factor", 0.18215);
  c.use_quant_conv = j.get_bool("use_quant_conv", true);
  c.use_post_quant_conv = j.get_bool("use_post_quant_conv", true);
  c.force_upcast = j.get_bool("force_upcast", false);
  // Per-channel latent statistics (Playground-style VAEs) change what the UNet sees; not taken
  // rather than ignored.
  for (const char* key : {"latents_mean", "latents_std"})
    if (j.has(key)) throw Error("per-channel latent statistics are not supported", j.source(), key);
  return c;
}

at::Tensor DiagonalGaussian::std() const {
  return at::exp(0.5 * logvar);
}

at::Tensor DiagonalGaussian::sample(std::optional<at::Generator> generator) const {
  // Noise is drawn on the generator's device and then moved, as diffusers' randn_tensor does, so
  // that a CPU generator gives the same latents whether the model runs on CPU or GPU.
  const c10::Device device = generator ? generator->device() : mean.device();
  at::Tensor eps =
      at::randn(mean.sizes(), generator, mean.options().device(device)).to(mean.device());
  return mean + std() * eps;
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& c) : config(c) {
  const int64_t L = c.vae.latent_channels;
  encoder = register_module("encoder", Encoder(c.vae));
  decoder = register_module("decoder", Decoder(c.vae));
  if (c.use_quant_conv)
    quant_conv = register_module("quant_conv", nn::Conv2d(nn::Conv2dOptions(2 * L, 2 * L, 1)));
  if (c.use_post_quant_conv)
    post_quant_conv = register_module("post_quant_conv", nn::Conv2d(nn::Conv2dOptions(L, L, 1)));
}

DiagonalGaussian AutoencoderKLImpl::encode(const at::Tensor& image) {
  at::Tensor moments = encoder->forward(image);
  if (quant_conv) moments = quant_conv->forward(moments);
  auto parts = moments.chunk(2, 1);
  return DiagonalGaussian{parts[0], at::clamp(parts[1], -30.0, 20.0)};
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& latents) {
  at::Tensor z = post_quant_conv ? post_quant_conv->forward(latents) : latents;
  return decoder->forward(z);
}

}  // namespace sdtune::models
