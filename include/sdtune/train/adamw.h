#pragma once
// AdamW (Loshchilov & Hutter, decoupled weight decay) over parameter groups, with the numbers of
// torch.optim.AdamW(fused=True): the update runs in ATen's fused kernel (_fused_adamw_, CPU and
// CUDA), and the state is laid out as torch keeps it, so a step here equals a step there bit for
// bit. Defaults are those of the diffusers training scripts (adam_beta1/2, adam_epsilon,
// adam_weight_decay).
#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/train/optimizer.h"

namespace sdtune::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class AdamW : public Optimizer {
 public:
  // Every parameter must be a floating-point leaf tensor; a parameter may belong to one group
  // only. Throws Error otherwise.
  explicit AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});

  // grad_scale and found_inf go into the fused kernel, which divides the gradients by the scale
  // and, where found_inf is non-zero, leaves parameters and moments untouched; the step count is
  // then rolled back (torch's fused path, which GradScaler.step uses).
  void step(const std::optional<at::Tensor>& grad_scale = std::nullopt,
            const std::optional<at::Tensor>& found_inf = std::nullopt) override;

 protected:
  // exp_avg and exp_avg_sq shaped like the parameter, and a float32 0-d step.
  StateLayout state_layout(const at::Tensor& p) const override;

 private:
  AdamWOptions options_;
};

}  // namespace sdtune::train
