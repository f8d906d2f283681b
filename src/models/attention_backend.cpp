#include "sdtune/models/attention_backend.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/SDPBackend.h>

#include <algorithm>
#include <map>
#include <vector>

#include "sdtune/error.h"

namespace sdtune::models {
namespace {

const std::map<std::string, at::SDPBackend>& backends() {
  static const std::map<std::string, at::SDPBackend> b{
      {"math", at::SDPBackend::math},
      {"flash", at::SDPBackend::flash_attention},
      {"efficient", at::SDPBackend::efficient_attention},
      {"cudnn", at::SDPBackend::cudnn_attention},
      {"overrideable", at::SDPBackend::overrideable}};
  return b;
}

std::string name_of(at::SDPBackend backend) {
  for (const auto& [name, b] : backends())
    if (b == backend) return name;
  return "?";
}

}  // namespace

void prefer_attention_backend(const std::string& name, c10::Device device) {
  if (device.is_cuda()) {  // PyTorch settles its own order at the first call; then ours goes on top
    at::NoGradGuard no_grad;
    const at::Tensor q = at::zeros({1, 1, 8, 64}, at::TensorOptions(device).dtype(at::kHalf));
    at::scaled_dot_product_attention(q, q, q);
  }
  static const std::vector<at::SDPBackend> original = [] {
    const auto order = at::globalContext().sDPPriorityOrder();
    return std::vector<at::SDPBackend>(order.begin(), order.end());
  }();
  std::vector<at::SDPBackend> order = original;
  if (name != "auto") {
    const auto it = backends().find(name);
    if (it == backends().end() || name == "overrideable")
      throw Error("unknown attention backend '" + name +
                  "'; choose auto, flash, cudnn, efficient or math");
    // Preferring a kernel also turns it on, if it was turned off.
    if (it->second == at::SDPBackend::cudnn_attention) at::globalContext().setSDPUseCuDNN(true);
    if (it->second == at::SDPBackend::flash_attention) at::globalContext().setSDPUseFlash(true);
    if (it->second == at::SDPBackend::efficient_attention)
      at::globalContext().setSDPUseMemEfficient(true);
    order.erase(std::remove(order.begin(), order.end(), it->second), order.end());
    order.insert(order.begin(), it->second);
  }
  std::vector<int64_t> ids;
  for (const auto b : order) ids.push_back(static_cast<int64_t>(b));
  at::globalContext().setSDPPriorityOrder(ids);
}

std::string attention_backend_order() {
  std::string out;
  for (const auto b : at::globalContext().sDPPriorityOrder()) {
    if (!out.empty()) out.push_back(',');
    out.append(name_of(b));
  }
  return out;
}

}  // namespace sdtune::models
