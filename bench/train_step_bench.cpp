// Times full UNet training steps of sdtune on a pipeline folder: the trainer's training_step()
// (x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, forward with encoder_hidden_states, the epsilon MSE loss,
// backward), one fused AdamW update (lr 1e-5, weight decay 1e-2) and zero_grad. bench/train_step.py
// runs it next to diffusers on the same weights and inputs and prints the ratio.
//
//   sdtune_bench_train_step --model DIR [--inputs in.safetensors | --batch B [--latent S]]
//       [--device cpu|cuda] [--mixed-precision no|bf16|fp16] [--gradient-checkpointing]
//       [--warmup N] [--iters M] [--threads T] [--lora-rank R] [--deterministic]
//       [--ddp [--ddp-backend nccl|gloo]] [--profile TRACE.json] [--channels-last]
//
// DIR holds unet/ and scheduler/ (its alphas_cumprod). Inputs: `latents`, `noise`, `timesteps`
// (int64 [B]) and `encoder_hidden_states` from the file, or random ones (seed 0) of batch B at
// S×S latents (default: the UNet's sample_size). Mixed precision is autocast around forward and
// loss with float32 master weights, as accelerate does it. With --lora-rank the UNet is frozen in
// the compute dtype and rank-R adapters (float32) on the attention projections train instead, as
// in diffusers' LoRA scripts. Prints one JSON line: seconds per step (mean, median, each), the
// loss of every step, the trainable parameters and optimizer state, the peak resident set size,
// and on CUDA the peak allocated memory.
// With --ddp (under torchrun) the step goes through the trainer's data-parallel path: the ranks'
// process group, the gradient reducer's buckets during backward, the loss summed over the ranks;
// bench/ddp_overhead.py compares one rank of it against the plain step.
// --channels-last: the UNet's 4-D weights and the latents laid out NHWC (models/memory_format.h).
// With --profile, one more step after the timed ones runs under PyTorch's profiler: its Chrome
// trace goes to TRACE.json and the time by category (profile/profiler.h) into the JSON line.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "driver.h"
#include "sdtune/distributed/gradient_reducer.h"
#include "sdtune/distributed/process_group.h"
#include "sdtune/error.h"
#include "sdtune/io/tensor.h"
#include "sdtune/lora/adapters.h"
#include "sdtune/models/attention_backend.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/memory_format.h"
#include "sdtune/profile/profiler.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/train/adafactor.h"
#include "sdtune/train/adamw.h"
#include "sdtune/train/determinism.h"
#include "sdtune/train/loss_scaler.h"
#include "sdtune/train/training_step.h"

namespace {

using sdtune::Error;
namespace sched = sdtune::schedulers;
namespace train = sdtune::train;

struct Args {
  std::string model;
  std::optional<std::string> inputs;
  std::optional<int64_t> batch, latent;
  std::string device = "cpu";
  std::string mixed_precision = "no";
  bool gradient_checkpointing = false;
  bool deterministic = false;  // sdtune train --deterministic's kernels (train/determinism.h)
  int warmup = 2, iters = 5, threads = 0;  // threads 0: LibTorch's default
  int64_t lora_rank = 0;                   // 0: full fine-tuning
  bool ddp = false;                        // through the data-parallel path (torchrun)
  std::string ddp_backend;                 // empty: nccl on CUDA, gloo on CPU
  std::string optimizer = "adamw";         // or adafactor (kohya's SDXL settings: lr, no scaling)
  std::string profile;                     // a Chrome trace of one more step; empty: none
  bool channels_last = false;              // NHWC convolutions
  std::string attention_backend = "auto";  // the SDPA kernel tried first
};

at::Tensor input(const std::map<std::string, at::Tensor>& in, const std::string& name) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("missing input tensor '" + name + "'");
  return it->second;
}

void run(const Args& a) {
  if (a.iters < 1 || a.warmup < 0) throw Error("--iters must be >= 1 and --warmup >= 0");
  if (a.mixed_precision != "no" && a.mixed_precision != "bf16" && a.mixed_precision != "fp16")
    throw Error("--mixed-precision must be no, bf16 or fp16, not '" + a.mixed_precision + "'");
  if (a.threads > 0) at::set_num_threads(a.threads);
  if (a.deterministic) sdtune::train::use_deterministic_algorithms();
  const c10::Device device(a.device);
  const auto folder = sdtune::io::ModelFolder::open(a.model);
  std::optional<at::ScalarType> autocast;
  if (a.mixed_precision != "no") autocast = sdtune::models::parse_dtype(a.mixed_precision);
  sdtune::models::LoadOptions load;
  load.device = device;  // float32 master weights, whatever the mixed precision
  if (a.lora_rank > 0) load.dtype = autocast.value_or(at::kFloat);  // frozen: compute dtype
  auto unet = sdtune::models::load_unet(folder, load);
  const auto scheduler = sched::SchedulerConfig::from_json(folder.component_config("scheduler"));

  // The batch: x₀, ε, t, text embeddings, all on the device before timing starts.
  std::map<std::string, at::Tensor> in;
  if (a.inputs) {
    in = sdtune::io::read_tensors(*a.inputs);
    if (a.batch && input(in, "latents").size(0) != *a.batch)
      throw Error(*a.inputs + ": batch " + std::to_string(input(in, "latents").size(0)) +
                  ", --batch " + std::to_string(*a.batch));
  } else {
    const int64_t b = a.batch.value_or(1), s = a.latent.value_or(unet->config.sample_size);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
    in["latents"] = at::randn({b, unet->config.in_channels, s, s}, gen);
    in["noise"] = at::randn({b, unet->config.in_channels, s, s}, gen);
    in["timesteps"] =
        at::randint(0, scheduler.num_train_timesteps, {b}, gen, at::TensorOptions(at::kLong));
    in["encoder_hidden_states"] = at::randn({b, 77, unet->config.cross_attention_dim}, gen);
    if (unet->config.text_time_embedding) {  // SDXL: a pooled vector and 1024² time ids
      const auto& c = unet->config;
      in["text_embeds"] = at::randn(
          {b, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim}, gen);
      in["time_ids"] =
          at::tensor({1024.f, 1024.f, 0.f, 0.f, 1024.f, 1024.f}).unsqueeze(0).repeat({b, 1});
    }
  }
  const auto layout =
      a.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor latents = input(in, "latents").to(device, at::kFloat).contiguous(layout);
  const at::Tensor noise = input(in, "noise").to(device, at::kFloat).contiguous(layout);
  const at::Tensor timesteps = input(in, "timesteps").to(device, at::kLong);
  const at::Tensor context = input(in, "encoder_hidden_states").to(device, at::kFloat);
  at::Tensor text_embeds, time_ids;
  if (unet->config.text_time_embedding) {
    text_embeds = input(in, "text_embeds").to(device, at::kFloat);
    time_ids = input(in, "time_ids").to(device, at::kFloat);
  }
  const int64_t batch = latents.size(0);

  unet->train();
  if (a.channels_last) sdtune::models::to_channels_last(*unet);
  sdtune::models::prefer_attention_backend(a.attention_backend, device);
  unet->set_gradient_checkpointing(a.gradient_checkpointing);
  std::vector<at::Tensor> params = unet->parameters();
  if (a.lora_rank > 0) {
    for (auto& p : params) p.set_requires_grad(false);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
    const auto adapters =
        sdtune::lora::attach_adapters(*unet,
                                      {.rank = a.lora_rank,
                                       .alpha = static_cast<double>(a.lora_rank),
                                       .targets = {"to_q", "to_k", "to_v", "to_out.0"}},
                                      gen);
    params.clear();
    for (const auto& adapter : adapters)
      params.insert(params.end(), {adapter.branch->down, adapter.branch->up});
  }
  std::unique_ptr<train::Optimizer> optimizer_owner;
  if (a.optimizer == "adafactor")
    optimizer_owner = std::make_unique<train::Adafactor>(
        std::vector<train::ParamGroup>{{params, /*lr=*/1e-5, /*wd=*/0.0}},
        train::AdafactorOptions{.scale_parameter = false, .relative_step = false});
  else if (a.optimizer == "adamw")
    optimizer_owner = std::make_unique<train::AdamW>(
        std::vector<train::ParamGroup>{{params, /*lr=*/1e-5, /*wd=*/1e-2}});
  else
    throw Error("--optimizer must be adamw or adafactor");
  train::Optimizer& optimizer = *optimizer_owner;

  namespace dist = sdtune::distributed;
  std::optional<dist::ProcessGroup> group;
  std::optional<dist::GradientReducer> reducer;
  if (a.ddp) {
    const dist::LaunchEnvironment env = dist::launch_environment();
    if (!env.distributed()) throw Error("--ddp: run under torchrun");
    const dist::Backend backend = !a.ddp_backend.empty() ? dist::parse_backend(a.ddp_backend)
                                  : device.is_cuda()     ? dist::Backend::Nccl
                                                         : dist::Backend::Gloo;
    group.emplace(env, std::chrono::minutes(5), backend, device);
    reducer.emplace(*group, params);
  }

  auto sync = [&] {
    if (!device.is_cpu())
      at::accelerator::synchronizeDevice(device.has_index() ? device.index()
                                                            : at::accelerator::getDeviceIndex());
  };
  // The trainer's own step (train/training_step.h): add_noise, forward, the epsilon loss and
  // backward, then the update.
  train::StepOptions options{.schedule = sched::make_noise_schedule(scheduler),
                             .prediction_type = sched::PredictionType::Epsilon,
                             .num_train_timesteps = scheduler.num_train_timesteps,
                             .autocast = autocast};
  options.schedule.alphas_cumprod = options.schedule.alphas_cumprod.to(device);
  const train::LossScaler no_scaling({.enabled = false}, device);
  auto step = [&] {
    if (reducer) reducer->arm();
    train::StepLoss loss = train::training_step(unet, nullptr, nullptr,
                                                /*text_encoder_trains=*/false,
                                                {.latents = latents,
                                                 .noise = noise,
                                                 .timesteps = timesteps,
                                                 .context = context,
                                                 .text_embeds = text_embeds,
                                                 .time_ids = time_ids},
                                                options, no_scaling);
    if (reducer) {  // as the trainer: gradients averaged, the loss summed over the ranks
      reducer->finish();
      loss.loss = group->sum(loss.loss) / static_cast<double>(group->size());
    }
    optimizer.step();
    optimizer.zero_grad();
    return loss.loss;
  };

  std::vector<double> losses;
  for (int i = 0; i < a.warmup; ++i) losses.push_back(step());
  std::vector<double> seconds;
  for (int i = 0; i < a.iters; ++i) {
    sync();
    const auto start = std::chrono::steady_clock::now();
    losses.push_back(step());
    sync();
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

  std::optional<sdtune::profile::Breakdown> profiled;
  if (!a.profile.empty()) {
    sync();
    sdtune::profile::Profiler profiler(device.is_cuda());
    step();
    sync();
    profiled = profiler.stop(a.profile);
    std::fprintf(stderr, "%s", profiled->table().c_str());
  }

  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  double mean = 0;
  for (double s : seconds) mean += s / static_cast<double>(n);
  nlohmann::json out;
  out["seconds_per_step_mean"] = mean;
  out["seconds_per_step_median"] = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  out["step_seconds"] = seconds;
  out["losses"] = losses;
  out["batch"] = batch;
  out["trainable_parameters"] = optimizer.num_parameters();
  out["optimizer_state_bytes"] = optimizer.state_bytes();
  int64_t frozen = 0;
  for (const auto& p : unet->parameters())
    if (!p.requires_grad()) frozen += p.numel();
  out["frozen_parameters"] = frozen;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  out["peak_rss_bytes"] = static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux: kilobytes
  // The resident set now, after the steps: the peak above also counts loading (the mapped
  // weight file's pages next to the model's own copy).
  if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
    long pages = 0, resident = 0;
    if (std::fscanf(statm, "%ld %ld", &pages, &resident) == 2)
      out["rss_after_steps_bytes"] = static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
    std::fclose(statm);
  }
  out["threads"] = at::get_num_threads();
  out["attention_order"] = sdtune::models::attention_backend_order();
  if (profiled) out["profile"] = profiled->to_json();
  if (group) {
    out["ddp_backend"] = dist::backend_name(group->backend());
    out["world_size"] = group->size();
    out["buckets"] = reducer->buckets();
    out["buckets_started_in_backward"] = reducer->started_in_backward();
  }
  if (device.is_cuda()) {
    const auto stats = at::accelerator::getDeviceStats(
        device.has_index() ? device.index() : at::accelerator::getDeviceIndex());
    // torch.cuda.max_memory_allocated(): the most bytes held by tensors at any one time.
    out["peak_memory_bytes"] =
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
  std::cout << out.dump() << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  return sdtune::driver::run_driver(
      argc, argv, "Times sdtune's UNet training steps on a pipeline folder",
      [&](CLI::App& app) {
        app.add_option("--model", a.model, "Pipeline folder (unet/, scheduler/)")->required();
        app.add_option("--inputs", a.inputs,
                       "latents, noise, timesteps, encoder_hidden_states (.safetensors)");
        app.add_option("--batch", a.batch,
                       "Batch of random inputs (default 1); with --inputs, checked");
        app.add_option("--latent", a.latent, "Latent side of random inputs (default: sample_size)");
        app.add_option("--device", a.device, "cpu or cuda")->capture_default_str();
        app.add_option("--mixed-precision", a.mixed_precision, "no, bf16 or fp16 (autocast)")
            ->capture_default_str();
        app.add_flag("--gradient-checkpointing", a.gradient_checkpointing,
                     "Recompute the UNet's block activations in backward");
        app.add_option("--warmup", a.warmup, "Untimed steps first")->capture_default_str();
        app.add_option("--iters", a.iters, "Timed steps")->capture_default_str();
        app.add_option("--threads", a.threads, "CPU threads (0: LibTorch's default)")
            ->capture_default_str();
        app.add_option("--lora-rank", a.lora_rank, "Train rank-R LoRA adapters (0: the full UNet)")
            ->capture_default_str();
        app.add_flag("--deterministic", a.deterministic, "sdtune train --deterministic's kernels");
        app.add_flag("--ddp", a.ddp, "Through the data-parallel path (under torchrun)");
        app.add_option("--ddp-backend", a.ddp_backend, "nccl or gloo (default: nccl on CUDA)");
        app.add_option("--optimizer", a.optimizer,
                       "adamw, or adafactor (lr 1e-5, no relative steps or parameter scaling)")
            ->capture_default_str();
        app.add_flag("--channels-last", a.channels_last, "NHWC weights and latents");
        app.add_option("--attention-backend", a.attention_backend,
                       "auto, flash, cudnn, efficient or math first")
            ->capture_default_str();
        app.add_option("--profile", a.profile,
                       "Profile one more step: its Chrome trace to this file, its time by "
                       "category into the JSON");
      },
      [&] { run(a); });
}
