#include "sdtune/models/activations.h"

#include "sdtune/error.h"

namespace sdtune::models {

Activation parse_activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "gelu") return Activation::GELU;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new") return Activation::GELUTanh;
  if (name == "quick_gelu") return Activation::QuickGELU;
  throw Error("unsupported activation function '" + name + "'");
}

at::Tensor activate(Activation act, const at::Tensor& x) {
  switch (act) {
    case Activation::SiLU:
      return at::silu(x);
    case Activation::GELU:
      return at::gelu(x);
    case Activation::GELUTanh:
      return at::gelu(x, "tanh");
    case Activation::QuickGELU:
      return x * at::sigmoid(1.702 * x);
  }
  return x;
}

}  // namespace sdtune::models
