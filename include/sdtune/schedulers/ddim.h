#pragma once
// DDIMScheduler (Song et al. 2021): deterministic (eta = 0) or partly stochastic sampling that
// skips timesteps of the training chain.
#include "sdtune/schedulers/scheduler.h"

namespace sdtune::schedulers {

class DDIMScheduler final : public Scheduler {
 public:
  explicit DDIMScheduler(SchedulerConfig config);

  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample, std::optional<at::Generator> generator) override;

 private:
  at::Tensor final_alpha_cumprod_;  // ᾱ "before" the first timestep: 1, or ᾱ_0
};

}  // namespace sdtune::schedulers
