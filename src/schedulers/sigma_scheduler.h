#pragma once
// What the σ-parameterized schedulers (Euler, Euler ancestral, DPM-Solver) share: a float32 list
// of noise levels σ_i, one per inference step plus a final one, and the index of the current step.
// The defaults are the variance-exploding form of Karras et al. (x_σ = x₀ + σ ε) that the Euler
// schedulers use; DPM-Solver overrides them.
#include <optional>
#include <string>
#include <vector>

#include "schedulers/discretization.h"
#include "sdtune/error.h"
#include "sdtune/schedulers/scheduler.h"

namespace sdtune::schedulers {

class SigmaScheduler : public Scheduler {
 public:
  // σ_max when the schedule starts at the last training timestep (linspace, trailing), else
  // √(σ_max² + 1): leading starts short of it, where diffusers still treats x as unit-variance.
  double init_noise_sigma() const override {
    at::Tensor max_sigma = sigmas_.max();
    if (config_.timestep_spacing == TimestepSpacing::Leading)
      return (max_sigma.pow(2) + 1).pow(0.5).item<double>();
    return max_sigma.item<double>();
  }

  // The UNet was trained on unit-variance inputs x_t = √ᾱ x₀ + √(1−ᾱ) ε = x_σ / √(σ² + 1).
  at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) override {
    init_step_index(timestep);
    at::Tensor sigma = sigmas_[*step_index_];
    return sample / (sigma.pow(2) + 1).pow(0.5);
  }

  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timesteps) const override {
    return original + noise * noise_sigmas(original, timesteps);
  }

  const at::Tensor& sigmas() const { return sigmas_; }

 protected:
  using Scheduler::Scheduler;

  // diffusers' _init_step_index: the begin index when set (img2img), else the position of the
  // first timestep the loop passes.
  void init_step_index(const at::Tensor& timestep) {
    if (!step_index_)
      step_index_ = begin_index_ ? *begin_index_
                                 : index_for_timestep(timesteps_, timestep, unscheduled_index());
    // E.g. DPM-Solver with Karras sigmas and zero terminal SNR: its timesteps repeat, the loop
    // starts at the second copy and runs out of σ's (diffusers fails there with an IndexError).
    if (*step_index_ + 1 >= sigmas_.size(0))
      throw Error("step " + std::to_string(*step_index_) + " is past the end of the schedule (" +
                  std::to_string(sigmas_.size(0) - 1) + " steps)");
  }
  // The index diffusers falls back to for a timestep that is not in the schedule (none: Error).
  virtual std::optional<int64_t> unscheduled_index() const { return std::nullopt; }

  // σ for each of `timesteps` [B], shaped [B, 1, ...] like `original`: by timestep before the
  // loop starts (no begin index), else at the current (or begin) step, as diffusers' add_noise.
  at::Tensor noise_sigmas(const at::Tensor& original, const at::Tensor& timesteps) const {
    at::Tensor sigmas = sigmas_.to(original.device(), original.scalar_type());
    std::vector<int64_t> indices;
    for (int64_t b = 0; b < timesteps.size(0); ++b) {
      if (!begin_index_)
        indices.push_back(index_for_timestep(timesteps_, timesteps[b], unscheduled_index()));
      else
        indices.push_back(step_index_ ? *step_index_ : *begin_index_);
    }
    at::Tensor sigma =
        sigmas.index_select(0, at::tensor(indices, at::kLong).to(original.device())).flatten();
    while (sigma.dim() < original.dim()) sigma = sigma.unsqueeze(-1);
    return sigma;
  }

  // Forgets the step and begin index (set_timesteps starts a new run).
  void reset_step_index() {
    step_index_.reset();
    begin_index_.reset();
  }

  at::Tensor sigmas_;  // float32 [num_steps + 1] (CPU), decreasing to 0 (or σ_min)
  std::optional<int64_t> step_index_;
};

}  // namespace sdtune::schedulers
