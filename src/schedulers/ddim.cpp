// DDIMScheduler: x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z, with
// σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) (eq. 12 and 16 of the paper). Scalars are
// float32 0-dim tensors, as in diffusers.
#include "sdtune/schedulers/ddim.h"

#include <string>

#include "schedulers/discretization.h"
#include "schedulers/registry.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {

DDIMScheduler::DDIMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  final_alpha_cumprod_ = config_.set_alpha_to_one ? at::scalar_tensor(1.0, at::kFloat)
                                                  : schedule_.alphas_cumprod[0].clone();
}

void DDIMScheduler::set_timesteps(int64_t n) {
  if (n < 1 || n > config_.num_train_timesteps)
    throw Error("DDIM: the number of steps must be in [1, " +
                std::to_string(config_.num_train_timesteps) + "], got " + std::to_string(n));
  num_inference_steps_ = n;
  timesteps_ = at::tensor(ddpm_timesteps(config_, n), at::kLong);
}

at::Tensor DDIMScheduler::step(const at::Tensor& model_output, const at::Tensor& timestep,
                               const at::Tensor& sample, std::optional<at::Generator> generator) {
  if (num_inference_steps_ == 0) throw Error("DDIM: step() before set_timesteps()");
  // diffusers takes the previous timestep as t − T/n whatever the spacing (so with trailing or
  // linspace it need not be the next scheduled timestep).
  const int64_t t = timestep.item<int64_t>();
  const int64_t prev_t = t - config_.num_train_timesteps / num_inference_steps_;
  const at::Tensor& ac = schedule_.alphas_cumprod;
  at::Tensor alpha_prod_t = ac[t];
  at::Tensor alpha_prod_t_prev = prev_t >= 0 ? ac[prev_t] : final_alpha_cumprod_;
  at::Tensor beta_prod_t = 1 - alpha_prod_t;

  at::Tensor x0, eps;
  switch (config_.prediction_type) {
    case PredictionType::Epsilon:
      x0 = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
      eps = model_output;
      break;
    case PredictionType::Sample:
      x0 = model_output;
      eps = (sample - alpha_prod_t.pow(0.5) * x0) / beta_prod_t.pow(0.5);
      break;
    case PredictionType::VPrediction:
      x0 = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
      eps = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
      break;
  }
  if (config_.clip_sample) x0 = x0.clamp(-config_.clip_sample_range, config_.clip_sample_range);

  // σ_t² / η² = (1−ᾱ_{t−1})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−1}).
  at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
  at::Tensor variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
  at::Tensor std_dev_t = eta_ * variance.pow(0.5);

  at::Tensor direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * eps;
  at::Tensor prev_sample = alpha_prod_t_prev.pow(0.5) * x0 + direction;
  if (eta_ > 0) {
    at::Tensor noise = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                    model_output.scalar_type());
    prev_sample = prev_sample + std_dev_t * noise;
  }
  return prev_sample;
}

std::unique_ptr<Scheduler> make_ddim(SchedulerConfig config) {
  return std::make_unique<DDIMScheduler>(std::move(config));
}

}  // namespace sdtune::schedulers
