#pragma once
// Timestep embeddings (diffusers' embeddings.py).
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "sdtune/models/activations.h"

namespace sdtune::models {

// Sinusoidal embedding of timesteps [B] (any numeric dtype) -> float32 [B, dim]:
//   freq_i = exp(-ln(10000) · i / (dim/2 − freq_shift)),  emb = [sin(t·freq), cos(t·freq)],
// halves swapped when flip_sin_to_cos (SD's convention), zero-padded when dim is odd.
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double freq_shift, double scale = 1.0, double max_period = 10000.0);

// linear_2(act(linear_1(x))): lifts the sinusoidal embedding to the UNet's time_embed_dim.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, Activation act);
  at::Tensor forward(const at::Tensor& x);

  Activation act;
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace sdtune::models
