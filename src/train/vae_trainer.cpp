// The VAE training loop: options, model, data, optimizer, then the loop (batch → encode → sample →
// decode → loss → update → log), then the scaling factor and the saved pipeline.
#include "sdtune/train/vae_trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>

#include "sdtune/data/batch_sampler.h"
#include "sdtune/data/image_loader.h"
#include "sdtune/data/image_transforms.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/pixels.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/train/adamw.h"
#include "sdtune/train/checkpoint.h"
#include "sdtune/train/grad_norm.h"
#include "sdtune/train/lr_schedule.h"
#include "sdtune/train/metrics_log.h"
#include "sdtune/train/output_lock.h"

namespace sdtune::train {
namespace fs = std::filesystem;
namespace {

void check_options(const VaeTrainOptions& o) {
  if (o.out.empty()) throw Error("--out is required");
  if (o.data.empty()) throw Error("--data is required");
  if (o.resolution < 8 || o.resolution % 8 != 0)
    throw Error("--resolution must be a positive multiple of 8, got " +
                std::to_string(o.resolution));
  if (o.batch_size < 1) throw Error("--batch-size must be at least 1");
  if (o.max_steps < 1) throw Error("--max-steps must be at least 1");
  if (!(o.learning_rate > 0)) throw Error("--learning-rate must be positive");
  if (!(o.kl_weight >= 0)) throw Error("--kl-weight must be >= 0");
  if (o.scaling_images < 1) throw Error("--scaling-images must be at least 1");
  if (o.log_every < 1) throw Error("--log-every must be at least 1");
}

// KL(N(μ, σ²) ‖ N(0, 1)) per element, averaged.
at::Tensor kl_divergence(const models::DiagonalGaussian& q) {
  return 0.5 * (q.mean.square() + q.logvar.exp() - 1.0 - q.logvar).mean();
}

}  // namespace

VaeTrainSummary train_vae(const VaeTrainOptions& o, const TrainHooks& hooks) {
  const auto started = std::chrono::steady_clock::now();
  auto say = [&](const std::string& m) { hooks.say(m); };
  check_options(o);
  const OutputLock lock(o.out);  // as train()
  for (const auto& left : lock.removed())
    say("removed " + left.string() + ", left by an interrupted run");
  VaeTrainSummary summary;

  // ---- Model: the VAE in float32, training mode ----------------------------------------------
  const c10::Device device(o.device);
  const io::ModelFolder base = io::ModelFolder::open(o.model);
  models::AutoencoderKL vae = models::load_vae(base, {device, at::kFloat, o.variant});
  vae->train();

  // ---- Data ------------------------------------------------------------------------------------
  const data::CaptionDataset dataset = data::open_dataset(
      o.data, o.image_column, o.caption_column,
      o.allow_outside_data ? data::Confinement::Anywhere : data::Confinement::DatasetFolder);
  summary.skipped = dataset.skipped();
  std::vector<data::Example> examples;
  std::vector<data::BucketResolution> sizes;
  data::usable_examples(dataset.examples(), examples, sizes, summary.skipped, o.max_image_pixels);
  if (examples.empty())
    throw Error("no usable training image (" + std::to_string(summary.skipped.size()) + " skipped)",
                o.data.string());
  summary.examples = static_cast<int64_t>(examples.size());
  const data::TransformOptions transform{
      o.resolution, o.center_crop, o.random_flip, {}, o.max_image_pixels};
  // Data sharding point (one process for now): every batch of the epoch's permutation.
  data::BatchSampler sampler(std::vector<int64_t>(examples.size(), 0), o.batch_size, o.seed);
  at::Generator data_gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  at::Generator noise_gen = device.is_cpu() ? at::detail::getDefaultCPUGenerator()
                                            : at::globalContext().defaultGenerator(device);
  noise_gen.set_current_seed(o.seed + 1);
  const auto load_batch = [&](const std::vector<int64_t>& items, bool augment) {
    std::vector<at::Tensor> pixels;
    const data::TransformOptions t =
        augment ? transform
                : data::TransformOptions{o.resolution, true, false, {}, o.max_image_pixels};
    for (int64_t i : items) {
      auto image = data::load_training_image(examples[i], t, data_gen, summary.skipped);
      if (!image) throw Error("training image became unreadable", examples[i].image.string());
      pixels.push_back(*image);
    }
    return at::stack(pixels).to(device);
  };

  // ---- Optimizer
  // ---------------------------------------------------------------------------------
  const std::vector<at::Tensor> params = vae->parameters();
  AdamW optimizer({{params, o.learning_rate, o.adam_weight_decay}});
  const LrSchedule lr_schedule("constant_with_warmup", {.warmup_steps = o.lr_warmup_steps});
  MetricsLog metrics(o.out / "logs");

  // ---- The loop ------------------------------------------------------------------------------
  for (int64_t step = 1; step <= o.max_steps; ++step) {
    const auto step_start = std::chrono::steady_clock::now();
    const at::Tensor x = load_batch(sampler.next(), true);
    const models::DiagonalGaussian posterior = vae->encode(x);
    // The reparameterization trick: z = μ + σ·ε keeps the sample differentiable in μ and σ.
    const at::Tensor z = posterior.sample(noise_gen);
    const at::Tensor reconstruction = vae->decode(z);
    const at::Tensor mse = (reconstruction - x).square().mean();
    const at::Tensor kl = kl_divergence(posterior);
    const at::Tensor loss = mse + o.kl_weight * kl;
    const double value = loss.item<double>();
    if (!std::isfinite(value))
      throw Error("the VAE loss is not finite at step " + std::to_string(step) +
                  "; try a lower --learning-rate");
    loss.backward();
    // Data-parallel gradient reduction point (an all-reduce over ranks) would go here.
    const double grad_norm = clip_grad_norm(params, o.max_grad_norm);
    optimizer.set_lr(0, lr_schedule.lr(o.learning_rate, step - 1));
    optimizer.step();
    optimizer.zero_grad();

    const double reconstruction_value = mse.item<double>();
    if (step == 1) summary.first_reconstruction = reconstruction_value;
    summary.last_reconstruction = reconstruction_value;
    summary.steps = step;
    StepMetrics m;
    m.step = step;
    m.max_steps = o.max_steps;
    m.epoch = sampler.epoch();
    m.loss = value;
    m.lr = optimizer.lr(0);
    m.grad_norm = grad_norm;
    m.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    if (step % o.log_every == 0 || step == 1 || step == o.max_steps)
      metrics.write({{"step", step},
                     {"epoch", m.epoch},
                     {"loss", value},
                     {"reconstruction", reconstruction_value},
                     {"kl", kl.item<double>()},
                     {"lr", m.lr},
                     {"grad_norm", grad_norm}});
    if (hooks.on_step) hooks.on_step(m);
    if (hooks.stop_requested && hooks.stop_requested->load()) {
      say("stopped at step " + std::to_string(step) + "; saving the VAE trained so far");
      break;
    }
  }

  // ---- Scaling factor: 1 / std of latent samples over (up to) scaling_images images ----------
  vae->eval();
  {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> latents;
    std::vector<at::Tensor> shown, rebuilt;  // the first images and their reconstructions
    const int64_t n = std::min<int64_t>(o.scaling_images, summary.examples);
    for (int64_t first = 0; first < n; first += o.batch_size) {
      std::vector<int64_t> items;
      for (int64_t i = first; i < std::min(n, first + o.batch_size); ++i) items.push_back(i);
      const at::Tensor x = load_batch(items, false);
      const models::DiagonalGaussian q = vae->encode(x);
      latents.push_back(q.sample(noise_gen).cpu());
      if (first == 0)
        for (int64_t i = 0; i < std::min<int64_t>(8, x.size(0)); ++i) {
          shown.push_back(io::tensor_to_pixels(x[i]));
          rebuilt.push_back(io::tensor_to_pixels(vae->decode(q.mean.narrow(0, i, 1))[0]));
        }
    }
    const double std = at::cat(latents).to(at::kDouble).std().item<double>();
    summary.scaling_factor = 1.0 / std;
    shown.insert(shown.end(), rebuilt.begin(), rebuilt.end());
    const int64_t cols = static_cast<int64_t>(rebuilt.size());
    const at::Tensor grid = io::labelled_grid(shown, 2, cols, {"input", "reconstruction"}, {});
    io::write_png(o.out / "logs" / "reconstructions.png", grid);
    metrics.image("vae/reconstructions", grid, summary.steps);
  }

  // ---- The pipeline with the trained VAE (rank 0 only, with data-parallel training) -------------
  io::SavedWeights weights;
  weights.vae = io::state_dict_of(*vae);
  weights.config_updates["vae"] = {{"scaling_factor", summary.scaling_factor}};
  save_final_model(base, o.out, weights);  // next to logs/, which it keeps
  summary.output = o.out;
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return summary;
}

}  // namespace sdtune::train
