#pragma once
// The activation functions named in diffusers / transformers configs.
#include <string>

#include <ATen/ATen.h>

namespace sdtune::models {

enum class Activation { SiLU, GELU, GELUTanh, QuickGELU };

// Parses a config's act_fn / hidden_act ("silu", "swish", "gelu", "gelu_pytorch_tanh",
// "quick_gelu"); an Error naming the value otherwise.
Activation parse_activation(const std::string& name);

// quick_gelu(x) = x · σ(1.702 x), the approximation OpenAI's CLIP was trained with.
at::Tensor activate(Activation act, const at::Tensor& x);

}  // namespace sdtune::models
