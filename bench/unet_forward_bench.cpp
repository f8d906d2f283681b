// Times UNet2DConditionModel forward passes of sdtune on a pipeline folder; bench/unet_forward.py
// runs it next to diffusers on the same weights and prints the ratio.
// Usage: sdtune_bench_unet MODEL_DIR DEVICE DTYPE BATCH LATENT_H LATENT_W WARMUP ITERS
// Prints one JSON line: {"seconds_per_forward": ...}. With --profile TRACE.json, one more forward
// runs under PyTorch's profiler: its Chrome trace goes there, its time by category to stderr and
// into the JSON line ("profile").
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include "driver.h"
#include "sdtune/models/attention_backend.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/memory_format.h"
#include "sdtune/profile/profiler.h"

namespace {

struct Args {
  std::string model, device, dtype;
  int64_t batch = 0, h = 0, w = 0;
  int warmup = 0, iters = 0;
  std::string profile;
  bool channels_last = false;
  std::string attention_backend = "auto";
};

void run(const Args& a) {
  using namespace sdtune;
  models::LoadOptions opts;
  opts.device = c10::Device(a.device);
  opts.dtype = models::parse_dtype(a.dtype);
  const int64_t batch = a.batch, h = a.h, w = a.w;
  const int warmup = a.warmup, iters = a.iters;

  auto folder = io::ModelFolder::open(a.model);
  auto unet = models::load_unet(folder, opts);
  if (a.channels_last) models::to_channels_last(*unet);
  models::prefer_attention_backend(a.attention_backend, opts.device);
  c10::InferenceMode guard;
  auto options = at::TensorOptions().device(opts.device).dtype(opts.dtype);
  at::Tensor sample = at::randn({batch, unet->config.in_channels, h, w}, options)
                          .contiguous(a.channels_last ? at::MemoryFormat::ChannelsLast
                                                      : at::MemoryFormat::Contiguous);
  at::Tensor context = at::randn({batch, 77, unet->config.cross_attention_dim}, options);
  at::Tensor t = at::full({batch}, 500, at::TensorOptions().device(opts.device).dtype(at::kLong));
  // SDXL (text_time): a pooled vector and 1024² time ids, as the bench's Python side passes them.
  std::optional<models::AddedConditions> added;
  if (unet->config.text_time_embedding) {
    const auto& c = unet->config;
    added = models::AddedConditions{
        at::randn({batch, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim},
                  options),
        at::tensor({1024.f, 1024.f, 0.f, 0.f, 1024.f, 1024.f})
            .unsqueeze(0)
            .repeat({batch, 1})
            .to(opts.device)};
  }
  const models::AddedConditions* extra = added ? &*added : nullptr;

  at::Tensor out;
  for (int i = 0; i < warmup; ++i) out = unet->forward(sample, t, context, extra);
  out.sum().item<float>();  // waits for the device
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) out = unet->forward(sample, t, context, extra);
  out.sum().item<float>();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nlohmann::json result = {{"seconds_per_forward", seconds / iters}};
  if (!a.profile.empty()) {
    profile::Profiler profiler(opts.device.is_cuda());
    out = unet->forward(sample, t, context, extra);
    out.sum().item<float>();
    const profile::Breakdown b = profiler.stop(a.profile);
    std::fprintf(stderr, "%s", b.table().c_str());
    result["profile"] = b.to_json();
  }
  std::printf("%s\n", result.dump().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  // Positional, in this order: bench/unet_forward.py passes them so.
  return sdtune::driver::run_driver(
      argc, argv, "Times sdtune's UNet forward passes on a pipeline folder",
      [&](CLI::App& app) {
        app.add_option("MODEL_DIR", a.model, "Pipeline folder")->required();
        app.add_option("DEVICE", a.device, "cpu or cuda")->required();
        app.add_option("DTYPE", a.dtype, "fp32, fp16 or bf16")->required();
        app.add_option("BATCH", a.batch, "Batch")->required();
        app.add_option("LATENT_H", a.h, "Latent height")->required();
        app.add_option("LATENT_W", a.w, "Latent width")->required();
        app.add_option("WARMUP", a.warmup, "Untimed forwards first")->required();
        app.add_option("ITERS", a.iters, "Timed forwards")->required();
        app.add_flag("--channels-last", a.channels_last, "NHWC weights and input");
        app.add_option("--attention-backend", a.attention_backend,
                       "auto, flash, cudnn, efficient or math first");
        app.add_option("--profile", a.profile,
                       "Profile one more forward: its Chrome trace to this file");
      },
      [&] { run(a); });
}
