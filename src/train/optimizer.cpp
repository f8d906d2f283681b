#include "sdtune/train/optimizer.h"

#include <cstdio>
#include <set>

#include "sdtune/error.h"

namespace sdtune::train {
namespace {

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

}  // namespace

Optimizer::Optimizer(std::string name, std::vector<ParamGroup> groups)
    : name_(std::move(name)), groups_(std::move(groups)) {
  std::set<const void*> seen;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const at::Tensor& p = groups_[g].params[i];
      const std::string where = "group " + std::to_string(g) + " param " + std::to_string(i);
      if (!p.defined()) throw Error(name_ + ": " + where + " is an undefined tensor");
      if (!p.is_floating_point())
        throw Error(name_ + ": " + where + " is not floating point (" +
                    std::string(c10::toString(p.scalar_type())) + ")");
      if (!p.is_leaf()) throw Error(name_ + ": " + where + " is not a leaf tensor");
      if (!seen.insert(p.unsafeGetTensorImpl()).second)
        throw Error(name_ + ": " + where + " appears in more than one place");
    }
    state_.emplace_back(groups_[g].params.size());
  }
}

void Optimizer::zero_grad() {
  for (auto& group : groups_)
    for (auto& p : group.params)
      if (p.grad().defined()) p.mutable_grad().reset();
}

const ParamGroup& Optimizer::group(int64_t g) const {
  if (g < 0 || g >= num_groups())
    throw Error(name_ + ": no parameter group " + std::to_string(g) + " (have " +
                std::to_string(num_groups()) + ")");
  return groups_[g];
}

double Optimizer::lr(int64_t g) const {
  return group(g).lr;
}

void Optimizer::set_lr(int64_t g, double lr) {
  group(g);  // range check
  groups_[g].lr = lr;
}

int64_t Optimizer::num_parameters() const {
  int64_t n = 0;
  for (const auto& group : groups_)
    for (const auto& p : group.params) n += p.numel();
  return n;
}

int64_t Optimizer::state_bytes() const {
  int64_t n = 0;
  for (const auto& group : state_)
    for (const auto& s : group)
      for (const auto& [name, t] : s) n += t.numel() * t.element_size();
  return n;
}

io::StateDict Optimizer::state_dict() const {
  // CPU copies: the checkpoint is written from host memory anyway, and a copy on the GPU would
  // need as much free memory again as the state itself.
  io::StateDict out;
  for (size_t g = 0; g < state_.size(); ++g)
    for (size_t i = 0; i < state_[g].size(); ++i)
      for (const auto& [name, t] : state_[g][i])
        out[state_key(g, i, name)] = t.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  return out;
}

void Optimizer::load_state_dict(const io::StateDict& state) {
  std::vector<std::string> missing, mismatched, unexpected;
  // [group][param] -> the entries found for it.
  std::map<std::pair<size_t, size_t>, std::map<std::string, at::Tensor>> found;
  for (const auto& [key, tensor] : state) {
    size_t g = 0, i = 0;
    std::string name;
    const bool in_range =
        parse_state_key(key, &g, &i, &name) && g < groups_.size() && i < groups_[g].params.size();
    const StateLayout layout = in_range ? state_layout(groups_[g].params[i]) : StateLayout{};
    auto entry =
        std::find_if(layout.begin(), layout.end(), [&](const auto& e) { return e.first == name; });
    if (entry == layout.end()) {
      unexpected.push_back(key);
      continue;
    }
    const std::vector<int64_t>& shape = entry->second.first;
    if (!tensor.sizes().equals(shape))
      mismatched.push_back(key + " (expected " + io::shape_string(shape) + ", got " +
                           io::shape_string(tensor.sizes()) + ")");
    found[{g, i}][name] = tensor;  // present, even when mismatched: not also reported missing
  }
  for (const auto& [gi, entries] : found)
    for (const auto& [name, layout] : state_layout(groups_[gi.first].params[gi.second]))
      if (!entries.count(name)) missing.push_back(state_key(gi.first, gi.second, name));

  io::KeyMismatch{missing, mismatched, unexpected}.throw_if_any(
      "optimizer state does not match the parameter groups");

  // As torch's Optimizer.load_state_dict: the saved state replaces the current one entirely, so
  // a parameter without saved state starts fresh.
  at::NoGradGuard no_grad;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      ParamState& s = state_[g][i];
      s.clear();
      auto it = found.find({g, i});
      if (it == found.end()) continue;
      const at::Tensor& p = groups_[g].params[i];
      for (const auto& [name, layout] : state_layout(p)) {
        const auto& [shape, dtype] = layout;
        // Shaped like the parameter: its memory format too, as zeros_like(p) made it.
        at::Tensor t = p.sizes().equals(shape) && p.scalar_type() == dtype
                           ? at::empty_like(p, at::MemoryFormat::Preserve)
                           : at::empty(shape, p.options().dtype(dtype));
        s[name] = t.copy_(it->second.at(name).reshape(shape));
      }
    }
  }
}

}  // namespace sdtune::train
