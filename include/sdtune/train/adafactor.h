#pragma once
// Adafactor (Shazeer & Stern, 2018) as transformers.optimization.Adafactor computes it, which is
// what kohya's sd-scripts and OneTrainer use to fine-tune SDXL in less memory. For a matrix (any
// tensor of two or more dimensions) the second moment is kept factored: one running mean of g²
// per row and one per column (over the last two dimensions), so the state is O(rows + columns)
// instead of AdamW's two full copies of the weights:
//
//   ρ_t   = 1 − t^decay_rate                                   (β2 grows toward 1 with t)
//   R     = ρ_t·R + (1 − ρ_t)·mean_cols(g² + ε1)                row statistics
//   C     = ρ_t·C + (1 − ρ_t)·mean_rows(g² + ε1)                column statistics
//   V̂     = (R / mean(R)) ⊗ C                                   rank-1 estimate of E[g²]
//   u     = g / √V̂,  u /= max(1, RMS(u) / clip_threshold)       update clipping
//   α_t   = max(ε2, RMS(p)) · ρ       (scale_parameter; else ρ)  ρ = min(10⁻², 1/√t) with relative
//           steps (10⁻⁶·t instead of 10⁻² with warmup_init), else the group's learning rate
//   p    −= α_t·(β1-averaged) u, after p −= weight_decay·α_t·p
//
// Vectors keep a full running mean of g². The operations follow transformers' order and dtypes,
// so that a step here equals a step there.
#include <optional>
#include <vector>

#include "sdtune/train/optimizer.h"

namespace sdtune::train {

// transformers' defaults (relative steps, parameter scaling, no first moment).
struct AdafactorOptions {
  double eps1 = 1e-30;  // added to g² (eps[0])
  double eps2 = 1e-3;   // floor of the parameter scale (eps[1])
  double clip_threshold = 1.0;
  double decay_rate = -0.8;
  std::optional<double> beta1;  // a first moment (one more full copy) when set
  bool scale_parameter = true;
  bool relative_step = true;  // the step size from the step count; the groups' lr is then unused
  bool warmup_init = false;   // relative steps that start at 10⁻⁶ and grow linearly
};

class Adafactor : public Optimizer {
 public:
  // The groups' weight_decay is Adafactor's (transformers' default 0). An Error for warmup_init
  // without relative_step, as transformers raises.
  explicit Adafactor(std::vector<ParamGroup> groups, AdafactorOptions options = {});

  // With found_inf non-zero nothing changes; grad_scale divides the gradients first.
  void step(const std::optional<at::Tensor>& grad_scale = std::nullopt,
            const std::optional<at::Tensor>& found_inf = std::nullopt) override;

  // With relative steps: ρ at the last step taken (min(10⁻², 1/√t)), what kohya's
  // AdafactorSchedule reports; otherwise the group's learning rate.
  double lr(int64_t group) const override;

 protected:
  // Factored (≥ 2 dimensions): exp_avg_sq_row (the shape without the last dimension) and
  // exp_avg_sq_col (without the second-to-last); else exp_avg_sq; exp_avg with beta1; a float64
  // 0-d step count.
  StateLayout state_layout(const at::Tensor& p) const override;

 private:
  double relative_step_size(double step) const;

  AdafactorOptions options_;
  double last_step_ = 0;  // the largest step count any parameter reached
};

}  // namespace sdtune::train
