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
  std::map<std::string, models::LoraLinearImpl*> layers;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto* layer = item.value()->as<models::LoraLinearImpl>();
    if (layer == nullptr) continue;
    bool wanted = false;
    for (const auto& t : options.targets) wanted = wanted || matches(item.key(), t);
    if (wanted) layers[item.key()] = layer;
  }
  std::vector<Adapter> out;
  at::NoGradGuard no_grad;
  for (const auto& [path, layer] : layers) {
    const at::Tensor& w = layer->weight;
    const int64_t in = w.size(1), out_features = w.size(0);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    auto branch = std::make_shared<models::LoraBranch>();
    // Drawn on the CPU so that a seed gives the same adapters on every device.
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    branch->down = at::empty({options.rank, in}, f32).uniform_(-bound, bound, gen).to(w.device());
    branch->up = at::zeros({out_features, options.rank}, f32.device(w.device()));
    branch->down.set_requires_grad(true);
    branch->up.set_requires_grad(true);
    branch->scale = options.alpha / static_cast<double>(options.rank);
    branch->dropout = options.dropout;
    layer->lora = branch;
    out.push_back({path, branch});
  }
  if (out.empty()) {
    std::string list;
    for (const auto& t : options.targets) {
      if (!list.empty()) list += ", ";
      list += t;
    }
    throw Error("no layer of the model matches the LoRA targets (" + list + ")");
  }
  return out;
}

void detach_adapters(torch::nn::Module& model) {
  for (const auto& item : model.named_modules("", false))
    if (auto* layer = item.value()->as<models::LoraLinearImpl>()) layer->lora.reset();
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
