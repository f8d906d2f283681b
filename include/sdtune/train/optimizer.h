#pragma once
// What every optimizer of a training run shares: parameter groups with their own learning rate and
// weight decay, gradients dropped after each step, per-parameter state tensors by name, and that
// state saved to and restored from checkpoints with every mismatch named. AdamW and Adafactor are
// the two behind it (train/adamw.h, train/adafactor.h).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/state_dict.h"

namespace sdtune::train {

struct ParamGroup {
  std::vector<at::Tensor> params;
  double lr = 1e-4;
  double weight_decay = 1e-2;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // One update of every parameter that has a gradient (the others, and their state, are left
  // alone, as torch does). For the fp16 loss scaler: `grad_scale` divides the gradients, and
  // where `found_inf` is non-zero parameters and state are left untouched.
  virtual void step(const std::optional<at::Tensor>& grad_scale = std::nullopt,
                    const std::optional<at::Tensor>& found_inf = std::nullopt) = 0;

  // Drops every gradient (optimizer.zero_grad(set_to_none=True)): the next backward allocates
  // fresh ones and no memory is spent on zeros.
  void zero_grad();

  int64_t num_groups() const { return static_cast<int64_t>(groups_.size()); }
  // The learning rate the LR schedule set for group g (Adafactor with relative steps ignores it).
  virtual double lr(int64_t group) const;
  void set_lr(int64_t group, double lr);
  const ParamGroup& group(int64_t g) const;

  // Number of parameter elements over all groups, and bytes held by the optimizer state created
  // so far.
  int64_t num_parameters() const;
  int64_t state_bytes() const;

  // Checkpoint state: "group{g}.param{i}.{name}" for every state tensor of every parameter that
  // has state. Learning rates are not saved: the LR schedule sets them from the step count.
  io::StateDict state_dict() const;
  // Restores state saved by state_dict() for the same groups and settings, copied to each
  // parameter's device. Throws one Error naming every incomplete entry, unknown key and shape
  // mismatch; nothing is changed when it throws.
  void load_state_dict(const io::StateDict& state);

 protected:
  // Every parameter must be a floating-point leaf tensor in one group only; an Error naming the
  // optimizer (`name`) and the parameter otherwise.
  Optimizer(std::string name, std::vector<ParamGroup> groups);

  // The state tensors parameter `p` has once it has taken a step: name -> (shape, dtype).
  using StateLayout =
      std::vector<std::pair<std::string, std::pair<std::vector<int64_t>, at::ScalarType>>>;
  virtual StateLayout state_layout(const at::Tensor& p) const = 0;

  using ParamState = std::map<std::string, at::Tensor>;  // empty until the first update

  std::string name_;
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;  // [group][param]
};

}  // namespace sdtune::train
