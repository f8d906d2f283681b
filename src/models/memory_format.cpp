#include "sdtune/models/memory_format.h"

#include <ATen/ATen.h>

namespace sdtune::models {

int64_t to_channels_last(torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  int64_t converted = 0;
  auto convert = [&](at::Tensor& t) {
    if (!t.defined() || t.dim() != 4 || t.is_contiguous(at::MemoryFormat::ChannelsLast)) return;
    // set_data swaps the storage under the same tensor (and autograd leaf).
    t.set_data(t.contiguous(at::MemoryFormat::ChannelsLast));
    ++converted;
  };
  for (auto& p : module.parameters()) convert(p);
  for (auto& b : module.buffers()) convert(b);
  return converted;
}

}  // namespace sdtune::models
