// EulerDiscreteScheduler (Karras et al. 2022, algorithm 2 without churn): one Euler step of the
// probability-flow ODE dx/dσ = (x − x̂₀)/σ from σ_i to σ_{i+1}. Deterministic: with s_churn = 0
// (the only setting sdtune exposes) diffusers draws no noise either.
#include <cmath>
#include <string>
#include <vector>

#include "schedulers/registry.h"
#include "schedulers/sigma_scheduler.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {
namespace {

class EulerDiscreteScheduler final : public SigmaScheduler {
 public:
  explicit EulerDiscreteScheduler(SchedulerConfig config) : SigmaScheduler(std::move(config)) {
    if (config_.use_exponential_sigmas || config_.use_beta_sigmas)
      throw Error("Euler: exponential and beta sigmas are not supported (use_karras_sigmas is)");
    if (config_.final_sigmas_type != "zero" && config_.final_sigmas_type != "sigma_min")
      throw Error("Euler: final_sigmas_type must be zero or sigma_min, got '" +
                      config_.final_sigmas_type + "'",
                  "", "final_sigmas_type");
    if (config_.interpolation_type != "linear" && config_.interpolation_type != "log_linear")
      throw Error("Euler: interpolation_type must be linear or log_linear, got '" +
                      config_.interpolation_type + "'",
                  "", "interpolation_type");
    if (config_.timestep_type != "discrete" && config_.timestep_type != "continuous")
      throw Error("Euler: timestep_type must be discrete or continuous, got '" +
                      config_.timestep_type + "'",
                  "", "timestep_type");
    // Zero terminal SNR makes σ_T infinite; diffusers caps ᾱ_T at 2⁻²⁴ instead.
    if (config_.rescale_betas_zero_snr) schedule_.alphas_cumprod[-1].fill_(std::pow(2.0, -24));
  }

  void set_timesteps(int64_t n) override {
    if (n < 1) throw Error("Euler: the number of steps must be at least 1");
    num_inference_steps_ = n;
    const std::vector<float> steps = euler_timesteps(config_, n);
    const std::vector<float> train = training_sigmas(schedule_.alphas_cumprod);
    std::vector<float> log_sigmas(train.size());
    for (size_t i = 0; i < train.size(); ++i) log_sigmas[i] = np_logf(train[i]);

    // σ at each (fractional) timestep: linear interpolation of the training σ's, or (log_linear)
    // n + 1 σ's evenly spaced in log σ from σ_T to σ_0.
    std::vector<double> timesteps(steps.begin(), steps.end()), sigmas;
    if (config_.interpolation_type == "linear") {
      sigmas = np_interp(timesteps, train);
    } else {
      at::Tensor s = at::linspace(np_logf(train.back()), np_logf(train.front()), n + 1, at::kFloat)
                         .exp()
                         .contiguous();
      sigmas.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
    }
    if (config_.use_karras_sigmas) {
      // Karras spacing between the end σ's; the timesteps follow the σ's (fractional).
      sigmas = karras_sigmas(config_.sigma_min.value_or(sigmas.back()),
                             config_.sigma_max.value_or(sigmas.front()), n);
      timesteps.clear();
      for (double s : sigmas) timesteps.push_back(sigma_to_t(s, log_sigmas));
    }
    std::vector<float> all(sigmas.begin(), sigmas.end());
    const at::Tensor& ac = schedule_.alphas_cumprod;
    all.push_back(config_.final_sigmas_type == "sigma_min"
                      ? ((1 - ac[0]) / ac[0]).pow(0.5).item<float>()
                      : 0.0f);
    sigmas_ = at::tensor(all, at::kFloat);

    if (config_.timestep_type == "continuous" &&
        config_.prediction_type == PredictionType::VPrediction) {
      // EDM-style conditioning c_noise = ¼ ln σ instead of a timestep.
      std::vector<at::Tensor> c;
      for (int64_t i = 0; i + 1 < sigmas_.size(0); ++i) c.push_back(0.25 * sigmas_[i].log());
      timesteps_ = at::stack(c);
    } else {
      timesteps_ = at::tensor(std::vector<float>(timesteps.begin(), timesteps.end()), at::kFloat);
    }
    reset_step_index();
  }

  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample_in, std::optional<at::Generator>) override {
    init_step_index(timestep);
    at::Tensor sample = sample_in.to(at::kFloat);
    at::Tensor sigma = sigmas_[*step_index_];
    at::Tensor sigma_hat = sigma * 1.0;  // σ̂ = σ (γ + 1) with γ = 0: no churn, no noise drawn

    at::Tensor x0;
    switch (config_.prediction_type) {
      case PredictionType::Epsilon:
        x0 = sample - sigma_hat * model_output;
        break;
      case PredictionType::Sample:
        x0 = model_output;
        break;
      case PredictionType::VPrediction:  // x̂₀ = x/(σ²+1) − σ v/√(σ²+1)
        x0 = model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));
        break;
    }
    at::Tensor derivative = (sample - x0) / sigma_hat;
    at::Tensor dt = sigmas_[*step_index_ + 1] - sigma_hat;
    at::Tensor prev_sample = sample + derivative * dt;
    ++*step_index_;
    return prev_sample.to(model_output.scalar_type());
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler(SchedulerConfig config) {
  if (!config.given.count("timestep_spacing")) config.timestep_spacing = TimestepSpacing::Linspace;
  return std::make_unique<EulerDiscreteScheduler>(std::move(config));
}

}  // namespace sdtune::schedulers
