#include "sdtune/models/lora_branch.h"

#include "sdtune/models/lora_conv2d.h"
#include "sdtune/models/lora_linear.h"

namespace sdtune::models {

std::shared_ptr<LoraBranch>* lora_slot(torch::nn::Module& module) {
  if (auto* linear = module.as<LoraLinearImpl>()) return &linear->lora;
  if (auto* conv = module.as<LoraConv2dImpl>()) return &conv->lora;
  return nullptr;
}

std::vector<at::Tensor> parameters_and_adapters(const torch::nn::Module& module) {
  std::vector<at::Tensor> out = module.parameters();
  for (const auto& m : module.modules(/*include_self=*/true))
    if (const auto* slot = lora_slot(*m); slot != nullptr && *slot)
      out.insert(out.end(), {(*slot)->down, (*slot)->up});
  return out;
}

}  // namespace sdtune::models
