#include "sdtune/train/adamw.h"

#include <utility>
#include <vector>

#include "sdtune/error.h"

namespace sdtune::train {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer("AdamW", std::move(groups)), options_(options) {}

Optimizer::StateLayout AdamW::state_layout(const at::Tensor& p) const {
  return {{"exp_avg", {p.sizes().vec(), p.scalar_type()}},
          {"exp_avg_sq", {p.sizes().vec(), p.scalar_type()}},
          {"step", {{}, at::kFloat}}};
}

// The update of torch's fused AdamW kernel (aten/src/ATen/native/FusedAdam*), per element, with
// t the step count after this step's increment:
//
//   p   = p · (1 − lr·weight_decay)                  decoupled weight decay, before the moments
//   m   = β1·m + (1 − β1)·g                          first moment
//   v   = β2·v + (1 − β2)·g²                         second moment
//   m̂   = m / (1 − β1^t),  v̂ = v / (1 − β2^t)         bias corrections for the zero init
//   p   = p − lr · m̂ / (√v̂ + ε)
//
// (the kernel evaluates the last line as p −= (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)).
// torch.optim increments the float32 step tensors outside the kernel, before it, and
// takes found_inf back off them after; we do the same so the state matches.
void AdamW::step(const std::optional<at::Tensor>& grad_scale,
                 const std::optional<at::Tensor>& found_inf) {
  at::NoGradGuard no_grad;
  for (size_t g = 0; g < groups_.size(); ++g) {
    ParamGroup& group = groups_[g];
    // The kernel takes lists of one device and dtype: bucket as torch does.
    struct Bucket {
      at::Device device;
      at::ScalarType dtype;
      std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    };
    std::vector<Bucket> buckets;
    for (size_t i = 0; i < group.params.size(); ++i) {
      at::Tensor& p = group.params[i];
      const at::Tensor& grad = p.grad();
      if (!grad.defined()) continue;
      if (grad.is_sparse()) throw Error("AdamW does not support sparse gradients");
      ParamState& s = state_[g][i];
      if (s.empty()) {
        // torch.optim.AdamW's lazy state for fused=True: zero moments shaped like the parameter
        // and a float32 0-d step on the parameter's device.
        s["exp_avg"] = at::zeros_like(p, at::MemoryFormat::Preserve);
        s["exp_avg_sq"] = at::zeros_like(p, at::MemoryFormat::Preserve);
        s["step"] = at::zeros({}, p.options().dtype(at::kFloat));
      }
      Bucket* b = nullptr;
      for (auto& candidate : buckets)
        if (candidate.device == p.device() && candidate.dtype == p.scalar_type()) b = &candidate;
      if (!b) b = &buckets.emplace_back(Bucket{p.device(), p.scalar_type(), {}, {}, {}, {}, {}});
      b->params.push_back(p);
      b->grads.push_back(grad);
      b->exp_avgs.push_back(s.at("exp_avg"));
      b->exp_avg_sqs.push_back(s.at("exp_avg_sq"));
      b->steps.push_back(s.at("step"));
    }
    for (auto& b : buckets) {
      std::optional<at::Tensor> scale, inf;
      if (grad_scale) scale = grad_scale->to(b.device, /*non_blocking=*/true);
      if (found_inf) inf = found_inf->to(b.device, /*non_blocking=*/true);
      at::_foreach_add_(b.steps, 1);
      at::_fused_adamw_(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, /*max_exp_avg_sqs=*/{},
                        b.steps, group.lr, options_.beta1, options_.beta2, group.weight_decay,
                        options_.eps, /*amsgrad=*/false, /*maximize=*/false, scale, inf);
      if (inf) at::_foreach_sub_(b.steps, std::vector<at::Tensor>(b.steps.size(), *inf));
    }
  }
}

}  // namespace sdtune::train
