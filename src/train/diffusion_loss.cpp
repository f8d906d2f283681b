#include "sdtune/train/diffusion_loss.h"

#include <numeric>
#include <vector>

#include "sdtune/error.h"

namespace sdtune::train {
using schedulers::alphas_cumprod_at;

at::Tensor sample_noise(at::IntArrayRef latent_shape, at::Generator gen, double noise_offset,
                        const at::TensorOptions& options) {
  at::Tensor noise = at::randn(latent_shape, gen, options);
  if (noise_offset > 0) {
    if (latent_shape.size() < 2) throw Error("noise offset needs latents of shape [B,C,...]");
    // Offset noise: one shift per sample and channel, so the model can learn to change the
    // image's mean brightness/colour (the [B,C,1,1] draw broadcasts over H, W).
    std::vector<int64_t> shape(latent_shape.size(), 1);
    shape[0] = latent_shape[0];
    shape[1] = latent_shape[1];
    noise = noise + noise_offset * at::randn(shape, gen, options);
  }
  return noise;
}

at::Tensor sample_timesteps(int64_t batch, int64_t num_train_timesteps, at::Generator gen) {
  return at::randint(0, num_train_timesteps, {batch}, gen,
                     at::TensorOptions().dtype(at::kLong).device(gen.device()));
}

at::Tensor training_target(PredictionType type, const at::Tensor& latents, const at::Tensor& noise,
                           const at::Tensor& timesteps, const NoiseSchedule& schedule) {
  switch (type) {
    case PredictionType::Epsilon:
      return noise;
    case PredictionType::VPrediction: {
      // v = √ᾱ_t · ε − √(1 − ᾱ_t) · x₀ (Salimans & Ho 2022), as get_velocity: ᾱ in x₀'s dtype.
      at::Tensor ac = alphas_cumprod_at(schedule, timesteps, latents);
      return at::pow(ac, 0.5) * noise - at::pow(1 - ac, 0.5) * latents;
    }
    case PredictionType::Sample:
      return latents;
  }
  throw Error("unknown prediction type");
}

at::Tensor snr(const NoiseSchedule& schedule, const at::Tensor& timesteps) {
  // compute_snr's float32 ops, in its order: α = √ᾱ, σ = √(1 − ᾱ), SNR = (α / σ)².
  const at::Tensor& ac = schedule.alphas_cumprod;
  at::Tensor t = timesteps.to(ac.device(), at::kLong);
  at::Tensor alpha = at::pow(ac, 0.5).index_select(0, t).to(at::kFloat);
  at::Tensor sigma = at::pow(1.0 - ac, 0.5).index_select(0, t).to(at::kFloat);
  return at::pow(alpha / sigma, 2);
}

at::Tensor min_snr_weights(const at::Tensor& snr, double gamma, PredictionType type) {
  // min(SNR, γ): γ as a float32 tensor, as the script's γ · ones_like(timesteps) is.
  at::Tensor clipped = at::minimum(snr, at::full_like(snr, gamma));
  switch (type) {
    case PredictionType::Epsilon:
      return clipped / snr;  // ε-loss = SNR · x₀-loss, so w = min(SNR, γ) / SNR
    case PredictionType::VPrediction:
      return clipped / (snr + 1);  // v-loss = (SNR + 1) · x₀-loss
    case PredictionType::Sample:
      return clipped;  // the script applies min(SNR, γ) alone here
  }
  throw Error("unknown prediction type");
}

at::Tensor diffusion_loss(const at::Tensor& model_pred, const at::Tensor& target,
                          const std::optional<at::Tensor>& weights) {
  at::Tensor pred = model_pred.to(at::kFloat), tgt = target.to(at::kFloat);
  if (!weights) return at::mse_loss(pred, tgt, at::Reduction::Mean);
  // Per-sample mean of (pred − target)², weighted, then the batch mean.
  at::Tensor loss = at::mse_loss(pred, tgt, at::Reduction::None);
  std::vector<int64_t> dims(loss.dim() - 1);
  std::iota(dims.begin(), dims.end(), 1);
  return (loss.mean(dims) * *weights).mean();
}

}  // namespace sdtune::train
