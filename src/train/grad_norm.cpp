#include "sdtune/train/grad_norm.h"

#include <cmath>

namespace sdtune::train {

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;
  const std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  const at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);
  const double total_norm = total.item<double>();
  if (max_norm > 0 && std::isfinite(total_norm)) {
    // clip_coef is clamped rather than branched on, as torch does, so that the multiply (by
    // exactly 1.0 when under the limit) is the same op sequence whatever the norm.
    const at::Tensor coef = at::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0);
    at::_foreach_mul_(grads, coef);
  }
  return total_norm;
}

}  // namespace sdtune::train
