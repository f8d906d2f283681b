#include "sdtune/models/embeddings.h"

#include <cmath>

namespace sdtune::models {

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double freq_shift, double scale, double max_period) {
  const int64_t half = dim / 2;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(timesteps.device());
  at::Tensor exponent = at::arange(0, half, f32) * (-std::log(max_period)) / (half - freq_shift);
  at::Tensor emb = timesteps.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  emb = scale * emb;
  emb = flip_sin_to_cos ? at::cat({at::cos(emb), at::sin(emb)}, -1)
                        : at::cat({at::sin(emb), at::cos(emb)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0}, 0);
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim,
                                             Activation act)
    : act(act) {
  linear_1 = register_module("linear_1", torch::nn::Linear(in_channels, time_embed_dim));
  linear_2 = register_module("linear_2", torch::nn::Linear(time_embed_dim, time_embed_dim));
}

at::Tensor TimestepEmbeddingImpl::forward(const at::Tensor& x) {
  return linear_2->forward(activate(act, linear_1->forward(x)));
}

}  // namespace sdtune::models
