// Times UNet2DConditionModel forward passes of sdtune on a pipeline folder; bench/unet_forward.py
// runs it next to diffusers on the same weights and prints the ratio.
// Usage: sdtune_bench_unet MODEL_DIR DEVICE DTYPE BATCH LATENT_H LATENT_W WARMUP ITERS
// Prints one JSON line: {"seconds_per_forward": ...}.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <c10/core/InferenceMode.h>

#include "sdtune/models/component_loader.h"

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr, "usage: %s MODEL DEVICE DTYPE BATCH H W WARMUP ITERS\n", argv[0]);
    return 2;
  }
  using namespace sdtune;
  models::LoadOptions opts;
  opts.device = c10::Device(argv[2]);
  opts.dtype = models::parse_dtype(argv[3]);
  const int64_t batch = std::atoll(argv[4]), h = std::atoll(argv[5]), w = std::atoll(argv[6]);
  const int warmup = std::atoi(argv[7]), iters = std::atoi(argv[8]);

  auto folder = io::ModelFolder::open(argv[1]);
  auto unet = models::load_unet(folder, opts);
  c10::InferenceMode guard;
  auto options = at::TensorOptions().device(opts.device).dtype(opts.dtype);
  at::Tensor sample = at::randn({batch, unet->config.in_channels, h, w}, options);
  at::Tensor context = at::randn({batch, 77, unet->config.cross_attention_dim}, options);
  at::Tensor t = at::full({batch}, 500, at::TensorOptions().device(opts.device).dtype(at::kLong));

  at::Tensor out;
  for (int i = 0; i < warmup; ++i) out = unet->forward(sample, t, context);
  out.sum().item<float>();  // waits for the device
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) out = unet->forward(sample, t, context);
  out.sum().item<float>();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"seconds_per_forward\": %.6f}\n", seconds / iters);
  return 0;
}
