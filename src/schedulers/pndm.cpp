// PNDMScheduler with skip_prk_steps (Liu et al. 2022, "pseudo linear multistep", PLMS): a
// 4th-order Adams–Bashforth combination of the last model outputs, fed to the DDIM-like transfer
// x_t → x_{t−δ}. SD 1.x ships this configuration; the Runge–Kutta warm-up (PRK) is not supported.
#include <string>
#include <vector>

#include "schedulers/discretization.h"
#include "schedulers/registry.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {
namespace {

class PNDMScheduler final : public Scheduler {
 public:
  explicit PNDMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
    if (!config_.skip_prk_steps)
      throw Error(
          "PNDM's Runge-Kutta (PRK) steps are not supported: set skip_prk_steps to true (PLMS, "
          "SD's default) or choose another scheduler",
          "", "skip_prk_steps");
    if (config_.prediction_type == PredictionType::Sample)
      throw Error("PNDM supports prediction_type epsilon and v_prediction only", "",
                  "prediction_type");
    final_alpha_cumprod_ = config_.set_alpha_to_one ? at::scalar_tensor(1.0, at::kFloat)
                                                    : schedule_.alphas_cumprod[0].clone();
  }

  void set_timesteps(int64_t n) override {
    if (n < 1) throw Error("PNDM: the number of steps must be at least 1");
    num_inference_steps_ = n;
    // PLMS visits t_{n−1}, t_{n−2}, t_{n−2}, t_{n−3}, ..., t_0: the second timestep repeats,
    // because the first two model evaluations make one (second-order) step together.
    std::vector<int64_t> down = ddpm_timesteps(config_, n);  // decreasing
    std::vector<int64_t> plms{down[0]};
    if (down.size() >= 2) plms.push_back(down[1]);
    for (size_t i = 1; i < down.size(); ++i) plms.push_back(down[i]);
    timesteps_ = at::tensor(plms, at::kLong);
    ets_.clear();
    counter_ = 0;
    cur_sample_.reset();
  }

  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample, std::optional<at::Generator>) override {
    if (num_inference_steps_ == 0) throw Error("PNDM: step() before set_timesteps()");
    const int64_t gap = config_.num_train_timesteps / num_inference_steps_;
    int64_t t = timestep.item<int64_t>();
    int64_t prev_t = t - gap;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    } else {
      // Second evaluation: same transfer t → t − δ as the first, from the first's start.
      prev_t = t;
      t = t + gap;
    }

    // Linear multistep on ε: e' = (e₁ + e₀)/2 (2nd call), (3e₁ − e₂)/2, (23e₁ − 16e₂ + 5e₃)/12,
    // then (55e₁ − 59e₂ + 37e₃ − 9e₄)/24, e₁ the newest.
    at::Tensor eps, x = sample;
    const size_t k = ets_.size();
    auto e = [&](size_t back) -> const at::Tensor& { return ets_[k - back]; };
    if (k == 1 && counter_ == 0) {
      eps = model_output;
      cur_sample_ = sample;
    } else if (k == 1 && counter_ == 1) {
      eps = (model_output + e(1)) / 2;
      x = *cur_sample_;
      cur_sample_.reset();
    } else if (k == 2) {
      eps = (3 * e(1) - e(2)) / 2;
    } else if (k == 3) {
      eps = (23 * e(1) - 16 * e(2) + 5 * e(3)) / 12;
    } else {
      eps = (1.0 / 24) * (55 * e(1) - 59 * e(2) + 37 * e(3) - 9 * e(4));
    }
    at::Tensor prev_sample = prev_sample_from(x, t, prev_t, eps);
    ++counter_;
    return prev_sample;
  }

 private:
  // Eq. 9 of the paper: x_{t−δ} = √(ᾱ_{t−δ}/ᾱ_t) x_t
  //   − (ᾱ_{t−δ} − ᾱ_t) ε / (ᾱ_t √(1−ᾱ_{t−δ}) + √(ᾱ_t (1−ᾱ_t) ᾱ_{t−δ})).
  at::Tensor prev_sample_from(const at::Tensor& sample, int64_t t, int64_t prev_t,
                              at::Tensor model_output) const {
    const at::Tensor& ac = schedule_.alphas_cumprod;
    at::Tensor alpha_prod_t = ac[t];
    at::Tensor alpha_prod_t_prev = prev_t >= 0 ? ac[prev_t] : final_alpha_cumprod_;
    at::Tensor beta_prod_t = 1 - alpha_prod_t;
    at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
    if (config_.prediction_type == PredictionType::VPrediction)  // v → ε
      model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    at::Tensor sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    at::Tensor denom = alpha_prod_t * beta_prod_t_prev.pow(0.5) +
                       (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom;
  }

  at::Tensor final_alpha_cumprod_;
  std::vector<at::Tensor> ets_;  // past model outputs (ε), oldest first
  int64_t counter_ = 0;
  std::optional<at::Tensor> cur_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(SchedulerConfig config) {
  // PNDM's own defaults, and no zero-SNR rescaling (diffusers' PNDM has no such option).
  if (!config.given.count("set_alpha_to_one")) config.set_alpha_to_one = false;
  config.rescale_betas_zero_snr = false;
  return std::make_unique<PNDMScheduler>(std::move(config));
}

}  // namespace sdtune::schedulers
