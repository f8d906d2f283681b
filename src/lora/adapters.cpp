#include "sdtune/lora/adapters.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "sdtune/error.h"

namespace sdtune::lora {
namespace {

bool matches(const std::string& path, const std::string& target) {
  return path == target || (path.size() > target.size() &&
                            path.compare(path.size() - target.size(), target.size(), target) == 0 &&
                            path[path.size() - target.size() - 1] == '.');
}

}  // namespace

std::vector<Adapter> attach_adapters(torch::nn::Module& model, const AdapterOptions& options,
                                     at::Generator& gen) {
  if (options.rank < 1)
    throw Error("LoRA rank must be at least 1, got " + std::to_string(options.rank));
  if (!(options.dropout >= 0 && options.dropout < 1)) throw Error("LoRA dropout must be in [0, 1)");
  // The targeted layers by module path: the draws follow the sorted paths, so that a seed gives
  // the same adapters whatever order the model registers its modules in.
  std::map<std::string, std::pair<torch::nn::Module*, std::shared_ptr<models::LoraBranch>*>> layers;
  std::vector<bool> used(options.targets.size(), false);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto* slot = models::lora_slot(*item.value());
    if (slot == nullptr) continue;
    for (size_t t = 0; t < options.targets.size(); ++t)
      if (matches(item.key(), options.targets[t])) {
        used[t] = true;
        layers[item.key()] = {item.value().get(), slot};
      }
  }
  // A target that names no LoRA-capable layer is a typo or another architecture's name.
  std::string unused;
  for (size_t t = 0; t < options.targets.size(); ++t)
    if (!used[t]) unused += (unused.empty() ? "" : ", ") + options.targets[t];
  if (!unused.empty())
    throw Error("no layer of the model matches the LoRA targets (" + unused + ")");
  std::vector<Adapter> out;
  at::NoGradGuard no_grad;
  for (const auto& [path, entry] : layers) {
    // A copy of the handle: the dict named_parameters returns is a temporary.
    const at::Tensor w = entry.first->named_parameters(/*recurse=*/false)["weight"];
    // Linear W [out, in]: A [r, in], B [out, r]. Conv2d W [out, in, kh, kw]: A [r, in, kh, kw]
    // (the layer's kernel), B [out, r, 1, 1]. PEFT's kaiming-uniform(a = √5) bound is
    // 1/√fan_in, fan_in = in·kh·kw.
    std::vector<int64_t> down_shape = w.sizes().vec(), up_shape = w.sizes().vec();
    down_shape[0] = options.rank;
    up_shape[1] = options.rank;
    for (size_t d = 2; d < up_shape.size(); ++d) up_shape[d] = 1;
    const int64_t fan_in = w.numel() / w.size(0);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    auto branch = std::make_shared<models::LoraBranch>();
    // Drawn on the CPU so that a seed gives the same adapters on every device.
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    branch->down = at::empty(down_shape, f32).uniform_(-bound, bound, gen).to(w.device());
    branch->up = at::zeros(up_shape, f32.device(w.device()));
    branch->down.set_requires_grad(true);
    branch->up.set_requires_grad(true);
    branch->scale = options.alpha / static_cast<double>(options.rank);
    branch->dropout = options.dropout;
    *entry.second = branch;
    out.push_back({path, branch});
  }
  return out;
}

void detach_adapters(torch::nn::Module& model) {
  for (const auto& item : model.named_modules("", false))
    if (auto* slot = models::lora_slot(*item.value())) slot->reset();
}

std::vector<LoraLayer> adapter_layers(const std::string& component,
                                      const std::vector<Adapter>& adapters, double alpha) {
  std::vector<LoraLayer> out;
  for (const auto& a : adapters)
    out.push_back(
        {component, a.module, a.branch->down.detach().cpu(), a.branch->up.detach().cpu(), alpha});
  return out;
}

io::StateDict adapters_state_dict(const AdapterSet& adapters) {
  io::StateDict out;
  for (const auto& [component, list] : adapters)
    for (const auto& a : list) {
      const std::string key = component + "." + a.module;
      out[key + ".down"] = a.branch->down.detach().cpu().clone();
      out[key + ".up"] = a.branch->up.detach().cpu().clone();
    }
  return out;
}

void load_adapters_state_dict(const AdapterSet& adapters, const io::StateDict& state,
                              const std::string& source) {
  io::KeyMismatch problems;
  std::map<std::string, at::Tensor> targets;  // key -> the factor it fills
  for (const auto& [component, list] : adapters)
    for (const auto& a : list) {
      const std::string key = component + "." + a.module;
      targets[key + ".down"] = a.branch->down;
      targets[key + ".up"] = a.branch->up;
    }
  for (const auto& [key, target] : targets) {
    auto it = state.find(key);
    if (it == state.end())
      problems.missing.push_back(key);
    else if (!it->second.sizes().equals(target.sizes()))
      problems.add_mismatch(key, target.sizes(), it->second.sizes());
  }
  for (const auto& [key, value] : state)
    if (!targets.count(key)) problems.unexpected.push_back(key);
  problems.throw_if_any("LoRA adapters do not match (another --lora-rank or --lora-layers?)",
                        source);
  at::NoGradGuard no_grad;
  for (auto& [key, target] : targets) target.copy_(state.at(key));
}

}  // namespace sdtune::lora
