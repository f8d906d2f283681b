#include "sdtune/lora/adapters.h"

#include <ATen/ATen.h>

#include <cmath>

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
  std::vector<Adapter> out;
  at::NoGradGuard no_grad;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto* layer = item.value()->as<models::LoraLinearImpl>();
    if (layer == nullptr) continue;
    bool wanted = false;
    for (const auto& t : options.targets) wanted = wanted || matches(item.key(), t);
    if (!wanted) continue;
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
    out.push_back({item.key(), branch});
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

}  // namespace sdtune::lora
