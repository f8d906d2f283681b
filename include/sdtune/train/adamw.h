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

#include "sdtune/io/state_dict.h"

namespace sdtune::train {

struct ParamGroup {
  std::vector<at::Tensor> params;
  double lr = 1e-4;
  double weight_decay = 1e-2;
};

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class AdamW {
 public:
  // Every parameter must be a floating-point leaf tensor; a parameter may belong to one group
  // only. Throws Error otherwise.
  explicit AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});

  // One update of every parameter that has a gradient (the others, and their state, are left
  // alone, as torch does). For the fp16 loss scaler: `grad_scale` divides the gradients inside the
  // kernel, and where `found_inf` is non-zero the kernel leaves parameters and moments untouched
  // and the step count is rolled back (torch's fused path, which GradScaler.step uses).
  void step(const std::optional<at::Tensor>& grad_scale = std::nullopt,
            const std::optional<at::Tensor>& found_inf = std::nullopt);

  // Drops every gradient (optimizer.zero_grad(set_to_none=True)): the next backward allocates
  // fresh ones and no memory is spent on zeros.
  void zero_grad();

  int64_t num_groups() const { return static_cast<int64_t>(groups_.size()); }
  double lr(int64_t group) const;
  void set_lr(int64_t group, double lr);
  const ParamGroup& group(int64_t g) const;

  // Number of parameter elements over all groups, and bytes held by the optimizer state
  // (exp_avg, exp_avg_sq, step) created so far.
  int64_t num_parameters() const;
  int64_t state_bytes() const;

  // Checkpoint state: "group{g}.param{i}.exp_avg", ".exp_avg_sq" and ".step" for every parameter
  // that has state. Learning rates are not saved: the LR schedule sets them from the step count.
  io::StateDict state_dict() const;
  // Restores state saved by state_dict() for the same groups, copied to each parameter's device
  // and dtype. Throws one Error naming every incomplete entry, unknown key and shape mismatch;
  // nothing is changed when it throws.
  void load_state_dict(const io::StateDict& state);

 private:
  struct ParamState {
    at::Tensor exp_avg, exp_avg_sq, step;  // undefined until the parameter's first update
  };

  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;  // [group][param]
  AdamWOptions options_;
};

}  // namespace sdtune::train
