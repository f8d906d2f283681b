#pragma once
// Dynamic loss scaling for fp16 training (Micikevicius et al. 2018), as torch.amp.GradScaler does
// it: the loss is multiplied by a scale S before backward so that small fp16 gradients do not
// flush to zero; the gradients are divided by S before clipping and the update. A step whose
// gradients hold an inf or NaN is skipped and S halves; after `growth_interval` clean steps in a
// row S doubles. With scaling disabled (fp32, bf16) every call is a no-op with S = 1.
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/state_dict.h"

namespace sdtune::train {

struct LossScalerOptions {
  bool enabled = false;
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class LossScaler {
 public:
  LossScaler(LossScalerOptions options, c10::Device device);

  // loss · S (the loss itself when disabled).
  at::Tensor scale(const at::Tensor& loss) const;

  // Divides the gradients of `params` by S in place and records whether any is inf/NaN (one fused
  // ATen kernel, _amp_foreach_non_finite_check_and_unscale_). Call once per optimizer step,
  // before gradient clipping. Returns true when the step must be skipped. When disabled it only
  // checks for non-finite gradients.
  bool unscale_and_check(const std::vector<at::Tensor>& params);

  // The 0-d float tensor AdamW::step takes as found_inf (non-zero: leave the parameters alone).
  const at::Tensor& found_inf() const { return found_inf_; }

  // After the optimizer step: S ← S · backoff on a skipped step, S ← S · growth after
  // growth_interval clean steps (_amp_update_scale_).
  void update();

  bool enabled() const { return options_.enabled; }
  double current_scale() const;

  // "scale" and "growth_tracker" (GradScaler.state_dict()'s fields that change).
  io::StateDict state_dict() const;
  void load_state_dict(const io::StateDict& state);

 private:
  LossScalerOptions options_;
  at::Tensor scale_;           // float32 [1] on the device
  at::Tensor growth_tracker_;  // int32 [1]
  at::Tensor found_inf_;       // float32 [1]
};

}  // namespace sdtune::train
