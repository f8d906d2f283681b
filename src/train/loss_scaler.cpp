#include "sdtune/train/loss_scaler.h"

#include <map>

#include "sdtune/error.h"

namespace sdtune::train {

LossScaler::LossScaler(LossScalerOptions options, c10::Device device) : options_(options) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  scale_ = at::full({1}, options_.enabled ? options_.init_scale : 1.0, f32);
  growth_tracker_ = at::zeros({1}, f32.dtype(at::kInt));
  found_inf_ = at::zeros({1}, f32);
}

at::Tensor LossScaler::scale(const at::Tensor& loss) const {
  if (!options_.enabled) return loss;
  return loss * scale_.to(loss.dtype());
}

bool LossScaler::unscale_and_check(const std::vector<at::Tensor>& params) {
  found_inf_.zero_();
  // One kernel per (device, dtype) group in torch; all our trainable parameters share both.
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return false;
  const at::Tensor inv_scale = scale_.to(at::kDouble).reciprocal().to(at::kFloat);
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, inv_scale);
  return found_inf_.item<float>() != 0.0f;
}

void LossScaler::update() {
  if (!options_.enabled) return;
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, options_.growth_factor,
                         options_.backoff_factor, options_.growth_interval);
}

double LossScaler::current_scale() const {
  return scale_.item<double>();
}

io::StateDict LossScaler::state_dict() const {
  return {{"scale", scale_.cpu().clone()}, {"growth_tracker", growth_tracker_.cpu().clone()}};
}

void LossScaler::load_state_dict(const io::StateDict& state) {
  io::KeyMismatch problems;
  for (const char* key : {"scale", "growth_tracker"}) {
    auto it = state.find(key);
    if (it == state.end())
      problems.missing.push_back(key);
    else if (it->second.numel() != 1)
      problems.add_mismatch(key, {1}, it->second.sizes());
  }
  for (const auto& [key, value] : state)
    if (key != "scale" && key != "growth_tracker") problems.unexpected.push_back(key);
  problems.throw_if_any("loss scaler state");
  scale_.copy_(state.at("scale").reshape({1}));
  growth_tracker_.copy_(state.at("growth_tracker").reshape({1}));
}

}  // namespace sdtune::train
