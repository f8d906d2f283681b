#include "sdtune/train/ema.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <string>

#include <torch/nn/module.h>

#include "sdtune/error.h"

namespace sdtune::train {
namespace {

const char* const kScalarKeys[] = {
    "optimization_step", "decay",     "min_decay", "update_after_step",
    "use_ema_warmup",    "inv_gamma", "power"};

std::string shadow_key(size_t i) {
  return "shadow_params." + std::to_string(i);
}

}  // namespace

Ema::Ema(const std::vector<at::Tensor>& params, EmaOptions options) : options_(options) {
  if (options_.decay < 0.0 || options_.decay > 1.0) throw Error("EMA decay must be in [0, 1]");
  at::NoGradGuard no_grad;
  shadow_.reserve(params.size());
  for (const auto& p : params) {
    if (!options_.offload || p.device().is_cpu()) {
      shadow_.push_back(p.detach().clone());
      continue;
    }
    // Pinned host memory makes the per-step device-to-host copy of the weights asynchronous-
    // capable and faster.
    at::Tensor host = at::empty(p.sizes(), p.options().device(at::kCPU).pinned_memory(true));
    shadow_.push_back(host.copy_(p.detach()));
  }
}

double Ema::get_decay(int64_t optimization_step) const {
  const int64_t step = std::max<int64_t>(0, optimization_step - options_.update_after_step - 1);
  if (step <= 0) return 0.0;
  double value;
  if (options_.use_ema_warmup)
    value = 1 - std::pow(1 + static_cast<double>(step) / options_.inv_gamma, -options_.power);
  else
    value = static_cast<double>(1 + step) / static_cast<double>(10 + step);
  value = std::min(value, options_.decay);
  return std::max(value, options_.min_decay);
}

// EMAModel.step (foreach=False): shadow.sub_((1 − decay) · (shadow − param)). The same tensor ops
// in the same order, so the float32 roundings (1 − decay is rounded to float by the multiply) are
// those of diffusers.
void Ema::step(const std::vector<at::Tensor>& params) {
  if (params.size() != shadow_.size())
    throw Error("EMA step: got " + std::to_string(params.size()) + " parameters, tracking " +
                std::to_string(shadow_.size()));
  at::NoGradGuard no_grad;
  optimization_step_ += 1;
  const double decay = get_decay(optimization_step_);
  cur_decay_value_ = decay;
  const double one_minus_decay = 1 - decay;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor& s = shadow_[i];
    at::Tensor p = params[i].detach();
    if (p.device() != s.device()) p = p.to(s.device());
    if (params[i].requires_grad())
      s.sub_(one_minus_decay * (s - p));
    else
      s.copy_(p);
  }
}

void Ema::step(const torch::nn::Module& module) {
  step(module.parameters());
}

void Ema::copy_to(const std::vector<at::Tensor>& params) const {
  if (params.size() != shadow_.size())
    throw Error("EMA copy_to: got " + std::to_string(params.size()) + " parameters, tracking " +
                std::to_string(shadow_.size()));
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor p = params[i];
    p.copy_(shadow_[i]);
  }
}

void Ema::copy_to(torch::nn::Module& module) const {
  copy_to(module.parameters());
}

int64_t Ema::state_bytes() const {
  int64_t n = 0;
  for (const auto& s : shadow_) n += s.numel() * s.element_size();
  return n;
}

io::StateDict Ema::state_dict() const {
  io::StateDict out;
  for (size_t i = 0; i < shadow_.size(); ++i)
    out[shadow_key(i)] = shadow_[i].to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  auto f64 = [](double v) { return at::scalar_tensor(v, at::kDouble); };
  auto i64 = [](int64_t v) { return at::scalar_tensor(v, at::kLong); };
  out["optimization_step"] = i64(optimization_step_);
  out["decay"] = f64(options_.decay);
  out["min_decay"] = f64(options_.min_decay);
  out["update_after_step"] = i64(options_.update_after_step);
  out["use_ema_warmup"] = i64(options_.use_ema_warmup ? 1 : 0);
  out["inv_gamma"] = f64(options_.inv_gamma);
  out["power"] = f64(options_.power);
  return out;
}

void Ema::load_state_dict(const io::StateDict& state) {
  std::vector<std::string> missing, mismatched, unexpected;
  std::set<std::string> known(std::begin(kScalarKeys), std::end(kScalarKeys));
  for (size_t i = 0; i < shadow_.size(); ++i) {
    const std::string key = shadow_key(i);
    known.insert(key);
    auto it = state.find(key);
    if (it == state.end())
      missing.push_back(key);
    else if (!it->second.sizes().equals(shadow_[i].sizes()))
      mismatched.push_back(key + " (expected " + io::shape_string(shadow_[i].sizes()) + ", got " +
                           io::shape_string(it->second.sizes()) + ")");
  }
  for (const char* key : kScalarKeys) {
    auto it = state.find(key);
    if (it == state.end())
      missing.push_back(key);
    else if (it->second.numel() != 1)
      mismatched.push_back(std::string(key) + " (expected [], got " +
                           io::shape_string(it->second.sizes()) + ")");
  }
  for (const auto& [key, tensor] : state)
    if (!known.count(key)) unexpected.push_back(key);
  io::KeyMismatch{missing, mismatched, unexpected}.throw_if_any(
      "EMA state does not match the model");
  const double decay = state.at("decay").item<double>();
  if (decay < 0.0 || decay > 1.0) throw Error("EMA state: decay must be in [0, 1]", "", "decay");

  at::NoGradGuard no_grad;
  for (size_t i = 0; i < shadow_.size(); ++i) shadow_[i].copy_(state.at(shadow_key(i)));
  optimization_step_ = state.at("optimization_step").item<int64_t>();
  options_.decay = decay;
  options_.min_decay = state.at("min_decay").item<double>();
  options_.update_after_step = state.at("update_after_step").item<int64_t>();
  options_.use_ema_warmup = state.at("use_ema_warmup").item<int64_t>() != 0;
  options_.inv_gamma = state.at("inv_gamma").item<double>();
  options_.power = state.at("power").item<double>();
}

}  // namespace sdtune::train
