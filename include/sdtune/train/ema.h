#pragma once
// Exponential moving average of model weights, as diffusers.training_utils.EMAModel (the
// --use_ema of train_text_to_image.py): after every optimizer step each trainable weight's shadow
// moves towards the weight by a fraction 1 − decay, with a decay that grows with the step count.
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/state_dict.h"

namespace torch::nn {
class Module;
}

namespace sdtune::train {

struct EmaOptions {
  double decay = 0.9999;  // upper bound of the decay
  double min_decay = 0.0;
  int64_t update_after_step = 0;
  bool use_ema_warmup = false;
  double inv_gamma = 1.0;    // warmup only
  double power = 2.0 / 3.0;  // warmup only
  // Keep the shadow weights in host memory (pinned where a GPU exists) whatever the model's
  // device: saves a model's worth of GPU memory for a device-to-host copy per step.
  bool offload = false;
};

class Ema {
 public:
  // Shadows start as copies of `params` (EMAModel(model.parameters())).
  Ema(const std::vector<at::Tensor>& params, EmaOptions options = {});

  // The decay for a given optimization step (diffusers' get_decay):
  //   s = max(0, optimization_step − update_after_step − 1); 0 if s == 0, else
  //   warmup: 1 − (1 + s/inv_gamma)^(−power)      otherwise: (1 + s)/(10 + s)
  // clamped to [min_decay, decay].
  double get_decay(int64_t optimization_step) const;

  // Counts the step, then for each parameter: shadow −= (1 − decay)·(shadow − param) if it
  // requires grad, shadow = param otherwise. `params` are the ones given to the constructor,
  // in the same order.
  void step(const std::vector<at::Tensor>& params);
  void step(const torch::nn::Module& module);

  // Writes the shadows into `params` (converted to each one's device and dtype).
  void copy_to(const std::vector<at::Tensor>& params) const;
  void copy_to(torch::nn::Module& module) const;

  const std::vector<at::Tensor>& shadow_params() const { return shadow_; }
  int64_t optimization_step() const { return optimization_step_; }
  double cur_decay_value() const { return cur_decay_value_; }
  const EmaOptions& options() const { return options_; }
  int64_t state_bytes() const;

  // Checkpoint state: "shadow_params.{i}" (CPU copies) and the settings and step count as 0-d
  // tensors ("optimization_step", "decay", "min_decay", "update_after_step", "use_ema_warmup",
  // "inv_gamma", "power"), the fields of EMAModel.state_dict().
  io::StateDict state_dict() const;
  // Restores it; throws one Error naming every missing key, unexpected key and shape mismatch
  // (nothing changes then). The offload setting stays as constructed.
  void load_state_dict(const io::StateDict& state);

 private:
  std::vector<at::Tensor> shadow_;
  EmaOptions options_;
  int64_t optimization_step_ = 0;
  double cur_decay_value_ = 0.0;
};

}  // namespace sdtune::train
