// DPMSolverMultistepScheduler, algorithm dpmsolver++ of order 2 with the midpoint update (Lu et
// al. 2022, "DPM-Solver++", algorithm 2): in λ = log(α/σ), with h = λ_t − λ_s,
//   first order   x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D₀
//   second order  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) (D₀ + ½ D₁),  D₁ = (D₀ − D₋₁)/r,
// r = h_prev/h, D = the data prediction x̂₀. The first step, and the last (final σ = 0), are first
// order. Every scalar is a float32 0-dim tensor as in diffusers.
#include <cmath>
#include <string>
#include <vector>

#include "schedulers/registry.h"
#include "schedulers/sigma_scheduler.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {
namespace {

class DPMSolverMultistepScheduler final : public SigmaScheduler {
 public:
  explicit DPMSolverMultistepScheduler(SchedulerConfig config) : SigmaScheduler(std::move(config)) {
    // diffusers maps the DEIS and UniPC names onto these.
    if (config_.algorithm_type == "deis") config_.algorithm_type = "dpmsolver++";
    if (config_.solver_type == "logrho" || config_.solver_type == "bh1" ||
        config_.solver_type == "bh2")
      config_.solver_type = "midpoint";
    if (config_.algorithm_type != "dpmsolver++")
      throw Error("DPM-Solver: only algorithm_type dpmsolver++ is supported, got '" +
                      config_.algorithm_type + "'",
                  "", "algorithm_type");
    if (config_.solver_order != 2)
      throw Error("DPM-Solver: only solver_order 2 is supported, got " +
                      std::to_string(config_.solver_order),
                  "", "solver_order");
    if (config_.solver_type != "midpoint")
      throw Error(
          "DPM-Solver: only solver_type midpoint is supported, got '" + config_.solver_type + "'",
          "", "solver_type");
    if (config_.final_sigmas_type != "zero" && config_.final_sigmas_type != "sigma_min")
      throw Error("DPM-Solver: final_sigmas_type must be zero or sigma_min, got '" +
                      config_.final_sigmas_type + "'",
                  "", "final_sigmas_type");
    if (config_.use_exponential_sigmas || config_.use_beta_sigmas || config_.use_lu_lambdas ||
        config_.use_flow_sigmas)
      throw Error(
          "DPM-Solver: exponential, beta, Lu and flow sigmas are not supported (Karras sigmas "
          "are)");
    if (config_.variance_type == "learned" || config_.variance_type == "learned_range")
      throw Error("DPM-Solver: learned variance is not supported", "", "variance_type");
    // ᾱ_T capped at 2⁻²⁴ under zero terminal SNR so that σ_T stays finite, as diffusers.
    if (config_.rescale_betas_zero_snr) schedule_.alphas_cumprod[-1].fill_(std::pow(2.0, -24));
  }

  double init_noise_sigma() const override { return 1.0; }
  at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor&) override {
    return sample;
  }
  // Variance-preserving: x_t = α_t x₀ + σ_t ε with α_t = 1/√(σ²+1), σ_t = σ α_t.
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timesteps) const override {
    auto [alpha_t, sigma_t] = alpha_sigma(noise_sigmas(original, timesteps));
    return alpha_t * original + sigma_t * noise;
  }

  void set_timesteps(int64_t n) override {
    if (n < 1) throw Error("DPM-Solver: the number of steps must be at least 1");
    const int64_t train = config_.num_train_timesteps;
    const at::Tensor& ac = schedule_.alphas_cumprod;
    // Timesteps whose λ is below lambda_min_clipped are cut off the end of the training schedule.
    at::Tensor lambda_t = at::log(at::sqrt(ac)) - at::log(at::sqrt(1 - ac));
    const int64_t clipped =
        at::searchsorted(at::flip(lambda_t, {0}), config_.lambda_min_clipped).item<int64_t>();
    const int64_t last = train - clipped;

    // n + 1 points over [0, last), the final one (t = 0 side) dropped.
    std::vector<int64_t> steps;
    switch (config_.timestep_spacing) {
      case TimestepSpacing::Linspace: {
        const auto v = np_linspace(0, static_cast<double>(last - 1), n + 1);
        for (int64_t i = n; i >= 1; --i) steps.push_back(static_cast<int64_t>(np_round(v[i])));
        break;
      }
      case TimestepSpacing::Leading: {
        const int64_t ratio = last / (n + 1);
        for (int64_t i = n; i >= 1; --i) steps.push_back(i * ratio + config_.steps_offset);
        break;
      }
      case TimestepSpacing::Trailing: {
        const auto v = np_arange(static_cast<double>(last), 0,
                                 -static_cast<double>(train) / static_cast<double>(n));
        for (double x : v) steps.push_back(static_cast<int64_t>(np_round(x)) - 1);
        break;
      }
    }

    const std::vector<float> train_sigmas = training_sigmas(ac);
    std::vector<double> sigmas;
    if (config_.use_karras_sigmas) {
      std::vector<float> log_sigmas(train_sigmas.size());
      for (size_t i = 0; i < train_sigmas.size(); ++i) log_sigmas[i] = np_logf(train_sigmas[i]);
      sigmas = karras_sigmas(train_sigmas.front(), train_sigmas.back(), n);
      // Timesteps follow the σ's, rounded to integers (not for the cosine schedule, where they
      // are truncated by the int64 cast).
      steps.clear();
      for (double s : sigmas) {
        double t = sigma_to_t(s, log_sigmas);
        if (config_.beta_schedule != "squaredcos_cap_v2") t = np_round(t);
        steps.push_back(static_cast<int64_t>(t));
      }
    } else {
      sigmas = np_interp(std::vector<double>(steps.begin(), steps.end()), train_sigmas);
    }
    std::vector<float> all(sigmas.begin(), sigmas.end());
    all.push_back(config_.final_sigmas_type == "sigma_min"
                      ? ((1 - ac[0]) / ac[0]).pow(0.5).item<float>()
                      : 0.0f);
    sigmas_ = at::tensor(all, at::kFloat);
    timesteps_ = at::tensor(steps, at::kLong);
    num_inference_steps_ = static_cast<int64_t>(steps.size());
    model_outputs_.assign(config_.solver_order, at::Tensor());
    lower_order_nums_ = 0;
    reset_step_index();
  }

  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample_in, std::optional<at::Generator>) override {
    if (num_inference_steps_ == 0) throw Error("DPM-Solver: step() before set_timesteps()");
    init_step_index(timestep);
    const int64_t i = *step_index_, n = timesteps_.size(0);
    // First order at the last step when the final σ is 0 (the second-order extrapolation to
    // σ = 0 is unstable), for short schedules (< 15 steps), or with euler_at_final. (diffusers'
    // lower_order_second only matters for order 3.)
    const bool lower_order_final =
        i == n - 1 && (config_.euler_at_final || (config_.lower_order_final && n < 15) ||
                       config_.final_sigmas_type == "zero");

    at::Tensor x0 = data_prediction(model_output, sample_in);
    for (size_t k = 0; k + 1 < model_outputs_.size(); ++k)
      model_outputs_[k] = model_outputs_[k + 1];
    model_outputs_.back() = x0;
    at::Tensor sample = sample_in.to(at::kFloat);

    at::Tensor prev_sample;
    if (lower_order_nums_ < 1 || lower_order_final)
      prev_sample = first_order_update(x0, sample);
    else
      prev_sample = second_order_update(sample);
    if (lower_order_nums_ < config_.solver_order) ++lower_order_nums_;
    ++*step_index_;
    return prev_sample.to(model_output.scalar_type());
  }

 private:
  // No match: the last step (diffusers' DPM-Solver index_for_timestep).
  std::optional<int64_t> unscheduled_index() const override { return timesteps_.size(0) - 1; }

  // α_t = 1/√(σ²+1), σ_t = σ α_t (diffusers' _sigma_to_alpha_sigma_t).
  static std::pair<at::Tensor, at::Tensor> alpha_sigma(const at::Tensor& sigma) {
    at::Tensor alpha_t = (sigma.pow(2) + 1).pow(0.5).reciprocal();
    return {alpha_t, sigma * alpha_t};
  }
  static at::Tensor lambda(const at::Tensor& alpha_t, const at::Tensor& sigma_t) {
    return at::log(alpha_t) - at::log(sigma_t);
  }

  // dpmsolver++ works on the data prediction x̂₀.
  at::Tensor data_prediction(const at::Tensor& model_output, const at::Tensor& sample) const {
    if (config_.prediction_type == PredictionType::Sample) return model_output;
    auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[*step_index_]);
    if (config_.prediction_type == PredictionType::Epsilon)
      return (sample - sigma_t * model_output) / alpha_t;
    return alpha_t * sample - sigma_t * model_output;  // v
  }

  at::Tensor first_order_update(const at::Tensor& x0, const at::Tensor& sample) const {
    auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[*step_index_ + 1]);
    auto [alpha_s, sigma_s] = alpha_sigma(sigmas_[*step_index_]);
    at::Tensor h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
    return (sigma_t / sigma_s) * sample - (alpha_t * (at::exp(-h) - 1.0)) * x0;
  }

  at::Tensor second_order_update(const at::Tensor& sample) const {
    auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[*step_index_ + 1]);
    auto [alpha_s0, sigma_s0] = alpha_sigma(sigmas_[*step_index_]);
    auto [alpha_s1, sigma_s1] = alpha_sigma(sigmas_[*step_index_ - 1]);
    at::Tensor lambda_t = lambda(alpha_t, sigma_t);
    at::Tensor lambda_s0 = lambda(alpha_s0, sigma_s0);
    at::Tensor lambda_s1 = lambda(alpha_s1, sigma_s1);
    const at::Tensor& m0 = model_outputs_[model_outputs_.size() - 1];
    const at::Tensor& m1 = model_outputs_[model_outputs_.size() - 2];
    at::Tensor h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1;
    at::Tensor r0 = h_0 / h;
    const at::Tensor& d0 = m0;
    at::Tensor d1 = r0.reciprocal() * 1.0 * (m0 - m1);
    return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * d0 -
           0.5 * (alpha_t * (at::exp(-h) - 1.0)) * d1;
  }

  std::vector<at::Tensor> model_outputs_;  // the last solver_order data predictions, oldest first
  int64_t lower_order_nums_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpm_solver_multistep(SchedulerConfig config) {
  if (!config.given.count("timestep_spacing")) config.timestep_spacing = TimestepSpacing::Linspace;
  return std::make_unique<DPMSolverMultistepScheduler>(std::move(config));
}

}  // namespace sdtune::schedulers
