// DDPMScheduler (Ho et al. 2020): ancestral sampling of the reverse diffusion, one Gaussian draw
// per step. Every scalar is a float32 0-dim tensor, as in diffusers, so that the arithmetic
// rounds the same way.
#include <string>

#include "schedulers/discretization.h"
#include "schedulers/registry.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {
namespace {

class DDPMScheduler final : public Scheduler {
 public:
  explicit DDPMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
    if (config_.variance_type.empty()) config_.variance_type = "fixed_small";
    const std::string& v = config_.variance_type;
    if (v != "fixed_small" && v != "fixed_small_log" && v != "fixed_large")
      throw Error("DDPM variance_type '" + v +
                      "' is not supported (expected fixed_small, fixed_small_log or fixed_large)",
                  "", "variance_type");
    one_ = at::scalar_tensor(1.0, at::kFloat);
  }

  void set_timesteps(int64_t n) override {
    if (n < 1 || n > config_.num_train_timesteps)
      throw Error("DDPM: the number of steps must be in [1, " +
                  std::to_string(config_.num_train_timesteps) + "], got " + std::to_string(n));
    num_inference_steps_ = n;
    timesteps_ = at::tensor(ddpm_timesteps(config_, n), at::kLong);
  }

  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample, std::optional<at::Generator> generator) override {
    const int64_t t = timestep.item<int64_t>();
    const int64_t prev_t = previous_timestep(t);
    const at::Tensor& ac = schedule_.alphas_cumprod;
    at::Tensor alpha_prod_t = ac[t];
    at::Tensor alpha_prod_t_prev = prev_t >= 0 ? ac[prev_t] : one_;
    at::Tensor beta_prod_t = 1 - alpha_prod_t;
    at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
    at::Tensor current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
    at::Tensor current_beta_t = 1 - current_alpha_t;

    // x̂₀ from the model's output: ε → (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, v → √ᾱ_t x_t − √(1−ᾱ_t) v.
    at::Tensor x0;
    switch (config_.prediction_type) {
      case PredictionType::Epsilon:
        x0 = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
        break;
      case PredictionType::Sample:
        x0 = model_output;
        break;
      case PredictionType::VPrediction:
        x0 = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
        break;
    }
    if (config_.clip_sample) x0 = x0.clamp(-config_.clip_sample_range, config_.clip_sample_range);

    // Mean of the posterior q(x_{t−1} | x_t, x̂₀) (eq. 7 of the paper):
    // μ = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x̂₀ + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t.
    at::Tensor x0_coeff = (alpha_prod_t_prev.pow(0.5) * current_beta_t) / beta_prod_t;
    at::Tensor sample_coeff = current_alpha_t.pow(0.5) * beta_prod_t_prev / beta_prod_t;
    at::Tensor prev_sample = x0_coeff * x0 + sample_coeff * sample;

    // Plus σ_t z, z ~ N(0, I), except at t = 0 (diffusers draws nothing there).
    if (t > 0) {
      at::Tensor noise = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                      model_output.scalar_type());
      at::Tensor variance = get_variance(t, prev_t, alpha_prod_t, alpha_prod_t_prev);
      at::Tensor std_dev =
          config_.variance_type == "fixed_small_log" ? variance : variance.pow(0.5);
      prev_sample = prev_sample + std_dev * noise;
    }
    return prev_sample;
  }

 private:
  // The timestep after t in the inference schedule, -1 after the last one.
  int64_t previous_timestep(int64_t t) const {
    if (num_inference_steps_ == 0) return t - 1;
    at::Tensor idx = (timesteps_ == t).nonzero();
    if (idx.size(0) == 0) throw Error("DDPM: timestep " + std::to_string(t) + " is not scheduled");
    const int64_t i = idx[0][0].item<int64_t>();
    return i == timesteps_.size(0) - 1 ? -1 : timesteps_[i + 1].item<int64_t>();
  }

  // β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t (fixed_small; its square root for fixed_small_log), or β_t
  // itself (fixed_large), with β_t = 1 − ᾱ_t/ᾱ_{t−1} over the (possibly strided) step.
  at::Tensor get_variance(int64_t t, int64_t prev_t, const at::Tensor& alpha_prod_t,
                          const at::Tensor& alpha_prod_t_prev) const {
    at::Tensor current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev;
    at::Tensor variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t;
    variance = variance.clamp_min(1e-20);
    if (config_.variance_type == "fixed_small_log") return at::exp(0.5 * at::log(variance));
    if (config_.variance_type == "fixed_large") return current_beta_t;
    return variance;
  }

  at::Tensor one_;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddpm(SchedulerConfig config) {
  return std::make_unique<DDPMScheduler>(std::move(config));
}

}  // namespace sdtune::schedulers
