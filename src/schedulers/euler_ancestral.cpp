// EulerAncestralDiscreteScheduler: an Euler step down to σ_down, then fresh noise of scale σ_up,
// where σ_up² + σ_down² = σ_{i+1}² and σ_up = σ_{i+1} √((σ_i² − σ_{i+1}²)/σ_i²) (k-diffusion's
// get_ancestral_step with η = 1). Draws noise at every step, the last one included.
#include <cmath>
#include <string>
#include <vector>

#include "schedulers/registry.h"
#include "schedulers/sigma_scheduler.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {
namespace {

class EulerAncestralDiscreteScheduler final : public SigmaScheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(SchedulerConfig config)
      : SigmaScheduler(std::move(config)) {
    if (config_.prediction_type == PredictionType::Sample)
      throw Error("Euler ancestral supports prediction_type epsilon and v_prediction only", "",
                  "prediction_type");
    // As Euler: ᾱ_T capped at 2⁻²⁴ under zero terminal SNR so that σ_T stays finite.
    if (config_.rescale_betas_zero_snr) schedule_.alphas_cumprod[-1].fill_(std::pow(2.0, -24));
  }

  void set_timesteps(int64_t n) override {
    if (n < 1) throw Error("Euler ancestral: the number of steps must be at least 1");
    num_inference_steps_ = n;
    const std::vector<float> steps = euler_timesteps(config_, n);
    std::vector<double> sigmas = np_interp(std::vector<double>(steps.begin(), steps.end()),
                                           training_sigmas(schedule_.alphas_cumprod));
    std::vector<float> all(sigmas.begin(), sigmas.end());
    all.push_back(0.0f);
    sigmas_ = at::tensor(all, at::kFloat);
    timesteps_ = at::tensor(steps, at::kFloat);
    reset_step_index();
  }

  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample_in, std::optional<at::Generator> generator) override {
    init_step_index(timestep);
    at::Tensor sigma = sigmas_[*step_index_];
    at::Tensor sample = sample_in.to(at::kFloat);
    at::Tensor x0 =
        config_.prediction_type == PredictionType::Epsilon
            ? sample - sigma * model_output
            : model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));

    at::Tensor sigma_from = sigmas_[*step_index_];
    at::Tensor sigma_to = sigmas_[*step_index_ + 1];
    at::Tensor sigma_up =
        (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
    at::Tensor sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);

    at::Tensor derivative = (sample - x0) / sigma;
    at::Tensor dt = sigma_down - sigma;
    at::Tensor prev_sample = sample + derivative * dt;
    at::Tensor noise = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                    model_output.scalar_type());
    prev_sample = prev_sample + noise * sigma_up;
    ++*step_index_;
    return prev_sample.to(model_output.scalar_type());
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral(SchedulerConfig config) {
  if (!config.given.count("timestep_spacing")) config.timestep_spacing = TimestepSpacing::Linspace;
  return std::make_unique<EulerAncestralDiscreteScheduler>(std::move(config));
}

}  // namespace sdtune::schedulers
