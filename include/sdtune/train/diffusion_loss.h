#pragma once
// The math of one diffusion training step, as diffusers' examples/text_to_image/
// train_text_to_image.py does it: noise and timestep draws, the regression target of each
// prediction type, min-SNR loss weights (Hang et al. 2023, arXiv:2303.09556) and the MSE loss.
#include <cstdint>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>

#include "sdtune/schedulers/scheduler.h"

namespace sdtune::train {

using schedulers::NoiseSchedule;
using schedulers::PredictionType;

// ε ~ N(0, 1) of the latents' shape [B,C,H,W]; with noise_offset > 0 a second draw of shape
// [B,C,1,1] (a per-channel constant shift) is added: ε += noise_offset · N(0, 1). Drawn from
// `gen` in that order, as the script does.
at::Tensor sample_noise(at::IntArrayRef latent_shape, at::Generator gen, double noise_offset,
                        const at::TensorOptions& options);

// t ~ U{0, …, T−1}, int64 [batch] on the generator's device (torch.randint(0, T, (B,))).
at::Tensor sample_timesteps(int64_t batch, int64_t num_train_timesteps, at::Generator gen);

// What the UNet regresses onto: ε (epsilon), v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ (v_prediction, diffusers'
// get_velocity) or x₀ (sample). `timesteps` is int64 [B].
at::Tensor training_target(PredictionType type, const at::Tensor& latents, const at::Tensor& noise,
                           const at::Tensor& timesteps, const NoiseSchedule& schedule);

// SNR(t) = ᾱ_t / (1 − ᾱ_t), float32 [B], computed as diffusers' compute_snr: (√ᾱ / √(1−ᾱ))².
at::Tensor snr(const NoiseSchedule& schedule, const at::Tensor& timesteps);

// Min-SNR-γ weights per sample: min(SNR, γ)/SNR for epsilon, min(SNR, γ)/(SNR+1) for
// v_prediction; for sample, min(SNR, γ) unscaled (the script leaves that case alone).
at::Tensor min_snr_weights(const at::Tensor& snr, double gamma, PredictionType type);

// MSE in float32. Without weights: the mean over every element. With weights [B]: the mean
// per sample, times its weight, then the mean over the batch.
at::Tensor diffusion_loss(const at::Tensor& model_pred, const at::Tensor& target,
                          const std::optional<at::Tensor>& weights = std::nullopt);

}  // namespace sdtune::train
