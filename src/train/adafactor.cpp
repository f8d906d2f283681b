#include "sdtune/train/adafactor.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "sdtune/error.h"

namespace sdtune::train {
namespace {

// transformers' _rms: ‖x‖₂ / √numel.
at::Tensor rms(const at::Tensor& x) {
  return x.norm(2) / std::sqrt(static_cast<double>(x.numel()));
}

bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

}  // namespace

Adafactor::Adafactor(std::vector<ParamGroup> groups, AdafactorOptions options)
    : Optimizer("Adafactor", std::move(groups)), options_(options) {
  if (options_.warmup_init && !options_.relative_step)
    throw Error("Adafactor: warmup_init requires relative_step");
}

Optimizer::StateLayout Adafactor::state_layout(const at::Tensor& p) const {
  // The state lives in the gradient's dtype, float32 for half-precision parameters.
  const at::ScalarType dtype = is_half(p) ? at::kFloat : p.scalar_type();
  const std::vector<int64_t> shape = p.sizes().vec();
  StateLayout layout;
  if (options_.beta1) layout.push_back({"exp_avg", {shape, dtype}});
  if (shape.size() >= 2) {
    std::vector<int64_t> row(shape.begin(), shape.end() - 1), col(shape.begin(), shape.end() - 2);
    col.push_back(shape.back());
    layout.push_back({"exp_avg_sq_row", {row, dtype}});
    layout.push_back({"exp_avg_sq_col", {col, dtype}});
  } else {
    layout.push_back({"exp_avg_sq", {shape, dtype}});
  }
  layout.push_back({"step", {{}, at::kDouble}});
  return layout;
}

double Adafactor::relative_step_size(double step) const {
  const double min_step = options_.warmup_init ? 1e-6 * step : 1e-2;
  return std::min(min_step, 1.0 / std::sqrt(step));
}

double Adafactor::lr(int64_t g) const {
  if (!options_.relative_step) return Optimizer::lr(g);
  group(g);  // range check
  return last_step_ > 0 ? relative_step_size(last_step_) : 0.0;
}

void Adafactor::step(const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  at::NoGradGuard no_grad;
  if (found_inf && found_inf->item<double>() != 0) return;
  const AdafactorOptions& o = options_;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    for (size_t i = 0; i < group.params.size(); ++i) {
      const at::Tensor& p = group.params[i];
      at::Tensor grad = p.grad();
      if (!grad.defined()) continue;
      if (grad.is_sparse()) throw Error("Adafactor does not support sparse gradients");
      if (is_half(grad)) grad = grad.to(at::kFloat);
      if (grad_scale) grad = grad / grad_scale->to(grad.device());
      const bool factored = grad.dim() >= 2;

      ParamState& s = state_[g][i];
      if (s.empty()) {
        for (const auto& [name, layout] : state_layout(p))
          s[name] = name == "step" ? at::zeros({}, at::TensorOptions().dtype(at::kDouble))
                                   : at::zeros(layout.first, grad.options());
      }
      const at::Tensor p32 = is_half(p) ? p.to(at::kFloat) : p;
      at::Tensor& step = s.at("step");
      step.add_(1);
      const double t = step.item<double>();
      last_step_ = std::max(last_step_, t);

      // The step size α_t. transformers multiplies the relative step by max(ε2, RMS(p)), which
      // is the float32 tensor RMS(p) when that is larger and the float ε2 otherwise: the product
      // is then float32 or double, and so it is here.
      const double rel = o.relative_step ? relative_step_size(t) : group.lr;
      std::optional<at::Tensor> lr_tensor;
      double lr_scalar = rel;
      if (o.scale_parameter) {
        const at::Tensor param_rms = rms(p32);
        if ((param_rms > o.eps2).item<bool>())
          lr_tensor = param_rms * rel;
        else
          lr_scalar = o.eps2 * rel;
      }

      const double beta2t = 1.0 - std::pow(t, o.decay_rate);
      at::Tensor update = grad.pow(2) + o.eps1;
      if (factored) {
        at::Tensor& row = s.at("exp_avg_sq_row");
        at::Tensor& col = s.at("exp_avg_sq_col");
        row.mul_(beta2t).add_(update.mean(-1), 1.0 - beta2t);
        col.mul_(beta2t).add_(update.mean(-2), 1.0 - beta2t);
        // √ of the rank-1 estimate: rows normalised by their mean, times columns.
        const at::Tensor r_factor = (row / row.mean(-1, /*keepdim=*/true)).rsqrt_().unsqueeze(-1);
        const at::Tensor c_factor = col.unsqueeze(-2).rsqrt();
        update = at::mul(r_factor, c_factor);
        update.mul_(grad);
      } else {
        at::Tensor& v = s.at("exp_avg_sq");
        v.mul_(beta2t).add_(update, 1.0 - beta2t);
        update = v.rsqrt().mul_(grad);
      }
      update.div_((rms(update) / o.clip_threshold).clamp_(1.0));
      lr_tensor ? update.mul_(*lr_tensor) : update.mul_(lr_scalar);
      if (o.beta1) {
        at::Tensor& m = s.at("exp_avg");
        m.mul_(*o.beta1).add_(update, 1.0 - *o.beta1);
        update = m;
      }
      if (group.weight_decay != 0) {
        const double alpha = lr_tensor ? (*lr_tensor * -group.weight_decay).item<double>()
                                       : -group.weight_decay * lr_scalar;
        p32.add_(p32, alpha);
      }
      p32.add_(-update);
      if (is_half(p)) p.detach().copy_(p32);
    }
  }
}

}  // namespace sdtune::train
