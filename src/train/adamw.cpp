#include "sdtune/train/adamw.h"

#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>

#include "sdtune/error.h"

namespace sdtune::train {
namespace {

const char* const kStateNames[] = {"exp_avg", "exp_avg_sq", "step"};

std::string state_key(size_t g, size_t i, const std::string& name) {
  return "group" + std::to_string(g) + ".param" + std::to_string(i) + "." + name;
}

// Parses "group{g}.param{i}.{name}"; false for anything else.
bool parse_state_key(const std::string& key, size_t* g, size_t* i, std::string* name) {
  unsigned long long gg = 0, ii = 0;
  int consumed = 0;
  if (std::sscanf(key.c_str(), "group%llu.param%llu.%n", &gg, &ii, &consumed) != 2 || consumed == 0)
    return false;
  *g = gg;
  *i = ii;
  *name = key.substr(consumed);
  // Reject forms sscanf tolerates ("group+1", "group 1") by printing the key back.
  return state_key(*g, *i, *name) == key;
}

int64_t nbytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * t.element_size() : 0;
}

}  // namespace

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : groups_(std::move(groups)), options_(options) {
  std::set<const void*> seen;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const at::Tensor& p = groups_[g].params[i];
      const std::string where = "group " + std::to_string(g) + " param " + std::to_string(i);
      if (!p.defined()) throw Error("AdamW: " + where + " is an undefined tensor");
      if (!p.is_floating_point())
        throw Error("AdamW: " + where + " is not floating point (" +
                    std::string(c10::toString(p.scalar_type())) + ")");
      if (!p.is_leaf()) throw Error("AdamW: " + where + " is not a leaf tensor");
      if (!seen.insert(p.unsafeGetTensorImpl()).second)
        throw Error("AdamW: " + where + " appears in more than one place");
    }
    state_.emplace_back(groups_[g].params.size());
  }
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
      if (!s.step.defined()) {
        // torch.optim.AdamW's lazy state for fused=True: zero moments shaped like the parameter
        // and a float32 0-d step on the parameter's device.
        s.exp_avg = at::zeros_like(p, at::MemoryFormat::Preserve);
        s.exp_avg_sq = at::zeros_like(p, at::MemoryFormat::Preserve);
        s.step = at::zeros({}, p.options().dtype(at::kFloat));
      }
      Bucket* b = nullptr;
      for (auto& candidate : buckets)
        if (candidate.device == p.device() && candidate.dtype == p.scalar_type()) b = &candidate;
      if (!b) b = &buckets.emplace_back(Bucket{p.device(), p.scalar_type(), {}, {}, {}, {}, {}});
      b->params.push_back(p);
      b->grads.push_back(grad);
      b->exp_avgs.push_back(s.exp_avg);
      b->exp_avg_sqs.push_back(s.exp_avg_sq);
      b->steps.push_back(s.step);
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

void AdamW::zero_grad() {
  for (auto& group : groups_)
    for (auto& p : group.params)
      if (p.grad().defined()) p.mutable_grad().reset();
}

const ParamGroup& AdamW::group(int64_t g) const {
  if (g < 0 || g >= num_groups())
    throw Error("AdamW: no parameter group " + std::to_string(g) + " (have " +
                std::to_string(num_groups()) + ")");
  return groups_[g];
}

double AdamW::lr(int64_t g) const {
  return group(g).lr;
}

void AdamW::set_lr(int64_t g, double lr) {
  group(g);  // range check
  groups_[g].lr = lr;
}

int64_t AdamW::num_parameters() const {
  int64_t n = 0;
  for (const auto& group : groups_)
    for (const auto& p : group.params) n += p.numel();
  return n;
}

int64_t AdamW::state_bytes() const {
  int64_t n = 0;
  for (const auto& group : state_)
    for (const auto& s : group) n += nbytes(s.exp_avg) + nbytes(s.exp_avg_sq) + nbytes(s.step);
  return n;
}

io::StateDict AdamW::state_dict() const {
  // CPU copies: the checkpoint is written from host memory anyway, and a copy on the GPU would
  // need as much free memory again as the state itself.
  io::StateDict out;
  auto copy = [](const at::Tensor& t) { return t.to(at::kCPU, /*non_blocking=*/false, true); };
  for (size_t g = 0; g < state_.size(); ++g) {
    for (size_t i = 0; i < state_[g].size(); ++i) {
      const ParamState& s = state_[g][i];
      if (!s.step.defined()) continue;
      out[state_key(g, i, "exp_avg")] = copy(s.exp_avg);
      out[state_key(g, i, "exp_avg_sq")] = copy(s.exp_avg_sq);
      out[state_key(g, i, "step")] = copy(s.step);
    }
  }
  return out;
}

void AdamW::load_state_dict(const io::StateDict& state) {
  std::vector<std::string> missing, mismatched, unexpected;
  // [group][param] -> the entries found for it.
  std::map<std::pair<size_t, size_t>, std::map<std::string, at::Tensor>> found;
  for (const auto& [key, tensor] : state) {
    size_t g = 0, i = 0;
    std::string name;
    bool known = parse_state_key(key, &g, &i, &name) && g < groups_.size() &&
                 i < groups_[g].params.size() &&
                 (name == "exp_avg" || name == "exp_avg_sq" || name == "step");
    if (!known) {
      unexpected.push_back(key);
      continue;
    }
    const at::Tensor& p = groups_[g].params[i];
    const bool is_step = name == "step";
    if (is_step ? tensor.numel() != 1 || tensor.dim() != 0 : !tensor.sizes().equals(p.sizes())) {
      mismatched.push_back(key + " (expected " + (is_step ? "[]" : io::shape_string(p.sizes())) +
                           ", got " + io::shape_string(tensor.sizes()) + ")");
    }
    found[{g, i}][name] = tensor;  // present, even when mismatched: not also reported missing
  }
  for (const auto& [gi, entries] : found)
    for (const char* name : kStateNames)
      if (!entries.count(name)) missing.push_back(state_key(gi.first, gi.second, name));

  io::KeyMismatch{missing, mismatched, unexpected}.throw_if_any(
      "optimizer state does not match the parameter groups");

  // As torch's Optimizer.load_state_dict: the saved state replaces the current one entirely, so
  // a parameter without saved state starts fresh.
  at::NoGradGuard no_grad;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      ParamState& s = state_[g][i];
      auto it = found.find({g, i});
      if (it == found.end()) {
        s = ParamState{};
        continue;
      }
      const at::Tensor& p = groups_[g].params[i];
      auto& e = it->second;
      s.exp_avg = at::empty_like(p, at::MemoryFormat::Preserve).copy_(e.at("exp_avg"));
      s.exp_avg_sq = at::empty_like(p, at::MemoryFormat::Preserve).copy_(e.at("exp_avg_sq"));
      s.step = at::empty({}, p.options().dtype(at::kFloat)).copy_(e.at("step").reshape({}));
    }
  }
}

}  // namespace sdtune::train
