// The training loop. It reads top to bottom: options, class images, models, data, optimizer,
// resume, then the loop (micro-batches → gradient reduction → clipping → update → EMA → logs,
// validation and checkpoints), then the final model. Data-parallel runs (torchrun, mpirun, srun)
// differ from one process in three places: each rank trains on its slice of every global batch
// (the micro-batch loop), gradients are averaged over the ranks during the last micro-batch's
// backward pass (Ranks::reducer), and only rank 0 writes (Ranks::main).
#include "sdtune/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>

#include "sdtune/distributed/gradient_reducer.h"
#include "sdtune/distributed/launch_environment.h"
#include "sdtune/distributed/process_group.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/lora/adapters.h"
#include "sdtune/lora/lora.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"
#include "sdtune/train/adafactor.h"
#include "sdtune/train/adamw.h"
#include "sdtune/train/checkpoint.h"
#include "sdtune/train/class_images.h"
#include "sdtune/train/determinism.h"
#include "sdtune/train/ema.h"
#include "sdtune/train/grad_norm.h"
#include "sdtune/train/loss_scaler.h"
#include "sdtune/train/lr_schedule.h"
#include "sdtune/train/metrics_log.h"
#include "sdtune/train/output_lock.h"
#include "sdtune/train/train_state.h"
#include "sdtune/train/training_data.h"
#include "sdtune/train/training_models.h"
#include "sdtune/train/training_step.h"
#include "sdtune/train/validation.h"

namespace sdtune::train {
namespace fs = std::filesystem;
namespace {

// This process's place in the run: rank 0 of 1 without a launcher, else a member of a c10d
// process group. Only rank 0 (main) writes checkpoints, logs, validation images and the model.
struct Ranks {
  explicit Ranks(const TrainOptions& o) : env(distributed::launch_environment()) {
    if (!env.distributed()) return;
    const c10::Device device(o.device);
    const distributed::Backend backend = !o.ddp_backend.empty()
                                             ? distributed::parse_backend(o.ddp_backend)
                                         : device.is_cuda() ? distributed::Backend::Nccl
                                                            : distributed::Backend::Gloo;
    group.emplace(env, std::chrono::milliseconds(static_cast<int64_t>(o.ddp_timeout * 1000)),
                  backend, device);
  }
  bool main() const { return env.rank == 0; }
  int64_t rank() const { return env.rank; }
  int64_t world() const { return env.world_size; }
  // `values` summed over the ranks; themselves in one process.
  std::vector<double> sum(const std::vector<double>& values) {
    return group ? group->sum(values) : values;
  }
  void barrier() {
    if (group) group->barrier();
  }
  // The next backward pass ends the global batch: its gradients go to the other ranks as they
  // are finished (buckets of the trainable tensors), and finish_gradients() averages them.
  void arm_gradients() {
    if (reducer) reducer->arm();
  }
  void finish_gradients() {
    if (reducer) reducer->finish();
  }

  distributed::LaunchEnvironment env;
  std::optional<distributed::ProcessGroup> group;
  std::optional<distributed::GradientReducer> reducer;  // made once the trainable tensors are
};

// The files of a LoRA run's result (and, the first, of its checkpoints).
const char* const kLoraFile = "pytorch_lora_weights.safetensors";
const char* const kKohyaLoraFile = "lora_kohya.safetensors";
// With --save-single-file, next to the pipeline folder's components.
const char* const kSingleFile = "model.safetensors";

// DreamBooth's class images, generated before the models for training are loaded, so that the
// two copies of the base model are never in memory together.
void ensure_class_images(const TrainOptions& o, TrainSummary& summary, const TrainHooks& hooks,
                         Ranks& ranks) {
  const auto& db = o.dreambooth;
  const std::optional<at::ScalarType> amp = autocast_dtype(o.mixed_precision);
  ClassImageOptions c{
      db.class_prompt,
      db.num_class_images,
      db.class_inference_steps,
      db.class_guidance_scale,
      o.resolution,
      o.seed,
      o.allow_outside_data ? data::Confinement::Anywhere : data::Confinement::DatasetFolder,
      ranks.rank(),
      ranks.world(),
      [&] { ranks.barrier(); }};
  const ClassImageReport r = ensure_class_images(
      io::ModelFolder::open(o.model), {c10::Device(o.device), amp.value_or(at::kFloat), o.variant},
      db.class_data, c, [&](int64_t done, int64_t total) {
        hooks.say("generated class image " + std::to_string(done) + "/" + std::to_string(total));
      });
  summary.class_images_found = r.found;
  summary.class_images_generated = r.generated;
}

// Writes OUT/checkpoint-STEP (a pipeline folder, or a LoRA run's adapter file, plus
// training_state/) and prunes old ones. Returns its folder.
fs::path save_checkpoint(const TrainingModels& m, const TrainState& state,
                         const nlohmann::json& trainer, const TrainHooks& hooks) {
  CheckpointContents c;
  if (m.lora_on) {
    // The adapters alone, as diffusers' LoRA scripts checkpoint them: loadable with
    // load_lora_weights(checkpoint-STEP) and `sdtune generate --lora`.
    c.write_files = [&](const fs::path& dir) {
      lora::write_lora_file(dir / kLoraFile, lora_layers(m), lora::Format::Diffusers);
    };
  } else {
    c.pipeline = pipeline_weights(m, state.ema);
    if (m.o.save_single_file)  // from the pipeline just written into the checkpoint
      c.write_files = [](const fs::path& dir) {
        models::write_single_file(io::ModelFolder::open(dir), dir / kSingleFile);
      };
  }
  c.state = state.save();
  c.trainer_state = trainer;
  c.config_toml = m.o.effective_config;
  const fs::path dir = checkpoint_path(m.o.out, state.counters.step);
  write_checkpoint(m.base, dir, c);
  for (const auto& removed : prune_checkpoints(m.o.out, m.o.checkpoints_total_limit))
    hooks.say("removed old checkpoint " + removed.string());
  hooks.say("saved checkpoint " + dir.string());
  return dir;
}

// The validation images, from the EMA weights when EMA is on, as diffusers' script does (store,
// copy, restore).
void validate(TrainingModels& m, Ema* ema, MetricsLog* metrics, int64_t step) {
  const TrainOptions& o = m.o;
  if (o.validation_prompts.empty()) return;
  std::vector<at::Tensor> stored;
  if (ema) {
    for (const auto& p : m.unet_params) stored.push_back(p.detach().clone());
    ema->copy_to(m.unet_params);
  }
  const Validation v{o.validation_prompts, o.num_validation_images, o.validation_inference_steps,
                     o.validation_guidance_scale, o.seed};
  const at::Tensor grid = run_validation(m.base, m.fp32, m.text_encoder, m.text_encoder_2, m.unet,
                                         m.vae, v, m.amp, o.out / "logs" / "validation", step);
  if (metrics) metrics->image("validation/grid", grid, step);
  if (ema) {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < m.unet_params.size(); ++i) m.unet_params[i].detach().copy_(stored[i]);
  }
}

// The optimizer of a run: AdamW (or Adafactor) over the trainable tensors of the UNet (and of the
// text encoder, as a second group with its own learning rate), the LR schedule, EMA and fp16 loss
// scaling.
struct Optimization {
  Optimization(const TrainOptions& o, const TrainingModels& m, int64_t max_steps, int64_t world);

  // One optimizer step on the accumulated (and reduced) gradients: unscaling and the non-finite
  // check, clipping, the update at the schedule's learning rate (skipped when the loss or the
  // gradients are not finite), the loss scale, zeroed gradients, EMA. Counts the step in `c`;
  // reports the gradient norm, skip, learning rate and loss scale in `s`.
  void step(bool loss_finite, StepMetrics& s, TrainCounters& c);
  // Group g's learning rate at the last update (0: the UNet, 1: the text encoder).
  double lr(size_t g, const TrainCounters& c) const {
    if (relative_steps) return optimizer->lr(static_cast<int64_t>(g));
    return lr_schedule.lr(base_lrs[g], std::max<int64_t>(c.lr_step - 1, 0));
  }

  const std::vector<at::Tensor> unet_params;
  std::vector<at::Tensor> trainable;  // UNet's, then the text encoder's
  std::vector<double> base_lrs;
  const double max_grad_norm;
  const bool relative_steps;  // Adafactor's own step sizes: the LR schedule is not used
  std::unique_ptr<Optimizer> optimizer;
  LrSchedule lr_schedule;
  std::optional<Ema> ema;
  LossScaler scaler;
};

std::unique_ptr<Optimizer> make_optimizer(const TrainOptions& o, const TrainingModels& m,
                                          double lr) {
  const double decay = o.optimizer == "adafactor" ? o.adafactor_weight_decay : o.adam_weight_decay;
  std::vector<ParamGroup> groups{{m.unet_params, lr, decay}};
  if (o.train_text_encoder) groups.push_back({m.te_params, o.text_encoder_lr.value_or(lr), decay});
  if (o.optimizer == "adafactor")
    return std::make_unique<Adafactor>(std::move(groups), o.adafactor);
  return std::make_unique<AdamW>(std::move(groups),
                                 AdamWOptions{o.adam_beta1, o.adam_beta2, o.adam_epsilon});
}

// --scale-lr: by the global batch, as accelerate's num_processes does in diffusers' scripts.
double scaled_lr(const TrainOptions& o, int64_t world) {
  const double scale = o.gradient_accumulation_steps * o.batch_size * world;
  return o.scale_lr ? o.learning_rate * scale : o.learning_rate;
}

Optimization::Optimization(const TrainOptions& o, const TrainingModels& m, int64_t max_steps,
                           int64_t world)
    : unet_params(m.unet_params),
      trainable(m.unet_params),
      base_lrs{scaled_lr(o, world), o.text_encoder_lr.value_or(scaled_lr(o, world))},
      max_grad_norm(o.max_grad_norm),
      relative_steps(o.optimizer == "adafactor" && o.adafactor.relative_step),
      optimizer(make_optimizer(o, m, scaled_lr(o, world))),
      lr_schedule(o.lr_scheduler, {.warmup_steps = o.lr_warmup_steps,
                                   .total_steps = max_steps,
                                   .base_lr = scaled_lr(o, world)}),
      scaler({.enabled = o.mixed_precision == "fp16"}, m.device) {
  if (o.train_text_encoder)
    trainable.insert(trainable.end(), m.te_params.begin(), m.te_params.end());
  if (o.use_ema)
    ema.emplace(
        unet_params,
        EmaOptions{.decay = o.ema_decay, .use_ema_warmup = o.ema_warmup, .offload = o.offload_ema});
}

void Optimization::step(bool loss_finite, StepMetrics& s, TrainCounters& c) {
  const bool found_inf = scaler.unscale_and_check(trainable);
  s.grad_norm = clip_grad_norm(trainable, max_grad_norm);
  s.skipped = found_inf || !loss_finite;
  if (!s.skipped) {
    for (int64_t g = 0; g < optimizer->num_groups(); ++g)
      optimizer->set_lr(g, lr_schedule.lr(base_lrs[g], c.lr_step));
    optimizer->step();
    ++c.lr_step;
  }
  scaler.update();
  optimizer->zero_grad();
  if (ema) ema->step(unet_params);
  ++c.step;
  c.nonfinite_run = loss_finite ? 0 : c.nonfinite_run + 1;
  s.lr = lr(0, c);
  s.loss_scale = scaler.current_scale();
}

void log_step(MetricsLog& metrics, const StepMetrics& m, const TrainOptions& o,
              const Optimization& opt, const TrainCounters& c) {
  nlohmann::json record = {
      {"step", m.step},           {"epoch", m.epoch},     {"loss", m.loss},           {"lr", m.lr},
      {"grad_norm", m.grad_norm}, {"skipped", m.skipped}, {"step_seconds", m.seconds}};
  if (opt.scaler.enabled()) record["loss_scale"] = m.loss_scale;
  if (o.dreambooth.enabled && o.dreambooth.with_prior_preservation) {
    record["loss_instance"] = m.loss_instance;
    record["loss_prior"] = m.loss_prior;
  }
  if (o.train_text_encoder) record["lr_text_encoder"] = opt.lr(1, c);
  metrics.write(record);
}

// The result: a LoRA run's adapters in diffusers' layout (load_lora_weights(OUT)) and kohya's
// (A1111, ComfyUI); else the pipeline folder.
void save_result(const TrainingModels& m, const Ema* ema, TrainSummary& summary) {
  const fs::path& out = m.o.out;
  if (m.lora_on) {
    fs::create_directories(out);
    const auto layers = lora_layers(m);
    lora::write_lora_file(out / kLoraFile, layers, lora::Format::Diffusers);
    lora::write_lora_file(out / kKohyaLoraFile, layers, lora::Format::Kohya, m.unet.ptr().get());
    summary.lora_files = {out / kLoraFile, out / kKohyaLoraFile};
  } else {
    save_final_model(m.base, out, pipeline_weights(m, ema));
    if (m.o.save_single_file) {
      models::write_single_file(io::ModelFolder::open(out), out / kSingleFile);
      summary.single_file = out / kSingleFile;
    }
  }
}

std::string nonfinite_message(int64_t run, int64_t step, const fs::path& last_checkpoint) {
  return "the loss was not finite for " + std::to_string(run) +
         " optimizer steps in a row (up to step " + std::to_string(step) + "); stopping. " +
         (last_checkpoint.empty()
              ? std::string("No checkpoint was saved yet.")
              : "The last good checkpoint is " + last_checkpoint.string() + ".") +
         " Try a lower --learning-rate, bf16 instead of fp16, or check the data.";
}

// What checkpoints hold of this run (and a resume restores).
TrainState train_state(TrainingModels& m, Optimization& opt, TrainingData& data,
                       at::Generator data_gen, at::Generator noise_gen) {
  return {.unet = m.unet,
          .text_encoder = m.text_encoder,
          .text_encoder_2 = m.text_encoder_2,
          .full_text_encoder = m.full_text_encoder,
          .adapters = m.lora_on ? &m.adapters : nullptr,
          .optimizer = opt.optimizer.get(),
          .ema = opt.ema ? &*opt.ema : nullptr,
          .scaler = &opt.scaler,
          .sampler = &data.sampler(),
          .data_gen = data_gen,
          .noise_gen = noise_gen};
}

// Optimizer steps per epoch: the epoch's batches over the global batch's micro-batches
// (accumulation × ranks), the last step partial.
int64_t steps_per_epoch(const TrainOptions& o, TrainingData& data, int64_t world) {
  const int64_t accumulation = o.gradient_accumulation_steps * world;
  return (data.sampler().batches_per_epoch() + accumulation - 1) / accumulation;
}

// During a run of non-finite losses the weights are suspect: no checkpoint then, so that pruning
// never removes the last good one.
bool checkpoint_allowed(const TrainCounters& c, const TrainHooks& hooks) {
  if (c.nonfinite_run == 0) return true;
  hooks.say("not saving a checkpoint at step " + std::to_string(c.step) +
            ": the loss is not finite");
  return false;
}

// --resume-from-checkpoint: the folder given, or with "latest" the newest checkpoint in OUT;
// empty for a new run.
fs::path resume_dir(const TrainOptions& o, const TrainHooks& hooks) {
  if (o.resume_from_checkpoint.empty() || o.resume_from_checkpoint != "latest")
    return o.resume_from_checkpoint;
  const auto all = list_checkpoints(o.out);
  if (all.empty()) {
    hooks.say("no checkpoint in " + o.out.string() + " to resume from; starting a new run");
    return {};
  }
  return all.back().second;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

void TrainHooks::say(const std::string& m) const {
  if (message)
    message(m);
  else
    std::fprintf(stderr, "sdtune: %s\n", m.c_str());
}

TrainSummary train(const TrainOptions& o, const TrainHooks& hooks) {
  const auto started = std::chrono::steady_clock::now();
  check_options(o);
  Ranks ranks(o);  // joins the other ranks of a data-parallel run
  // One run per OUT; what killed runs left half-written there goes. Rank 0 writes, so it locks.
  std::optional<OutputLock> lock;
  if (ranks.main()) lock.emplace(o.out);
  for (const auto& left : lock ? lock->removed() : std::vector<fs::path>{})
    hooks.say("removed " + left.string() + ", left by an interrupted run");
  ranks.barrier();  // nothing is read from OUT before the lock's cleaning
  if (o.deterministic) use_deterministic_algorithms();  // before the first CUDA operation
  TrainSummary summary;
  summary.rank = ranks.rank();
  summary.world_size = ranks.world();
  if (o.dreambooth.enabled && o.dreambooth.with_prior_preservation)
    ensure_class_images(o, summary, hooks, ranks);

  // ---- Models, data, the step ----------------------------------------------------------------
  TrainingModels m(o);
  if (o.save_single_file) models::check_single_file_writable(m.base);  // not after hours
  if (ranks.group) {
    // Every rank starts from rank 0's weights (LoRA's random initialisation included).
    std::vector<at::Tensor> start(m.unet_params);
    start.insert(start.end(), m.te_params.begin(), m.te_params.end());
    for (auto& t : start) t = t.detach();
    ranks.group->broadcast(start, 0);
  }
  // Every rank reads the whole epoch in the same order and takes its micro-batches from it in
  // the loop; the caches are filled shard by shard.
  TrainingData data(o, m.base,
                    {m.tokenizer, m.vae, m.text_encoder, m.device, m.weight_dtype, m.amp,
                     m.tokenizer_2 ? &*m.tokenizer_2 : nullptr, m.text_encoder_2},
                    {ranks.rank(), ranks.world(), [&] { ranks.barrier(); }}, summary,
                    [&](const std::string& s) { hooks.say(s); });
  const StepOptions step_opts = step_options(o, m);
  const int64_t accumulation = o.gradient_accumulation_steps;
  const int64_t max_steps =
      o.max_steps > 0 ? o.max_steps : o.num_train_epochs * steps_per_epoch(o, data, ranks.world());

  Optimization opt(o, m, max_steps, ranks.world());
  // Every rank divides its micro-batch losses by the local accumulation, so the gradients' mean
  // over the ranks is the gradient of one process's global batch.
  if (ranks.group) ranks.reducer.emplace(*ranks.group, opt.trainable);

  // ---- Random streams, state, resume ---------------------------------------------------------
  // `data_gen` (CPU) for crops and flips, `noise_gen` (the device's default generator) for the
  // VAE posterior sample, the noise and the timesteps, and for what draws from the default
  // generator itself (LoRA dropout). Both are seeded and checkpointed.
  at::Generator data_gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  at::Generator noise_gen = m.device.is_cpu() ? at::detail::getDefaultCPUGenerator()
                                              : at::globalContext().defaultGenerator(m.device);
  noise_gen.set_current_seed(o.seed + 1);
  TrainState state = train_state(m, opt, data, data_gen, noise_gen);
  TrainCounters& c = state.counters;
  fs::path last_checkpoint;
  if (const fs::path dir = resume_dir(o, hooks); !dir.empty()) {
    state.restore(dir);
    last_checkpoint = summary.resumed_from = dir;
    hooks.say("resumed from " + dir.string() + " at step " + std::to_string(c.step));
  }
  std::optional<MetricsLog> metrics;
  if (ranks.main()) metrics.emplace(o.out / "logs");

  // ---- The loop ------------------------------------------------------------------------------
  const int64_t first_step = c.step;
  bool text_encoder_trains = o.train_text_encoder;
  while (c.step < max_steps) {
    const auto step_start = std::chrono::steady_clock::now();
    if (text_encoder_trains && o.stop_text_encoder_training > 0 &&
        c.step >= o.stop_text_encoder_training) {
      // kohya's stop_text_encoder_training: frozen from here on. Its parameters get no
      // gradients, so AdamW, clipping and the loss scaler leave them alone.
      text_encoder_trains = false;
      m.freeze_text_encoder();
    }
    // The global batch: accumulation × ranks micro-batches, drawn by every rank in the order one
    // process accumulating all of them draws them (examples, crops, flips, latents, noise, t), so
    // that N ranks give that process's step. Rank r trains on micro-batches r, r + N, ...
    // Other ranks' micro-batches are not read or encoded: only their random draws are made.
    StepLoss sum;  // over this rank's micro-batches
    for (int64_t micro = 0; micro < accumulation * ranks.world(); ++micro) {
      const bool mine = micro % ranks.world() == ranks.rank();
      const Batch batch = mine ? data.next_batch(data_gen) : data.skip_batch(data_gen);
      const StepInputs in = draw_step_inputs(batch, noise_gen, step_opts);
      if (!mine) continue;
      if (micro / ranks.world() == accumulation - 1) ranks.arm_gradients();  // this rank's last
      const StepLoss l =
          training_step(m.unet, m.text_encoder, m.text_encoder_2, text_encoder_trains, in,
                        step_opts, opt.scaler, accumulation);
      sum.loss += l.loss;
      sum.instance += l.instance;
      sum.prior += l.prior;
    }
    // Logged losses are the global batch's means; a non-finite loss on any rank skips the step
    // on all of them.
    const std::vector<double> total = ranks.sum({sum.loss, sum.instance, sum.prior});
    const double micro_batches = static_cast<double>(accumulation * ranks.world());
    const bool loss_finite = std::isfinite(total[0]);  // NaN or inf on any rank makes the sum one
    StepMetrics s{.step = c.step + 1,
                  .max_steps = max_steps,
                  .loss = total[0] / micro_batches,
                  .loss_instance = total[1] / micro_batches,
                  .loss_prior = total[2] / micro_batches};

    ranks.finish_gradients();
    opt.step(loss_finite, s, c);
    if (s.skipped) ++summary.skipped_steps;
    s.epoch = data.sampler().epoch();
    s.seconds = seconds_since(step_start);
    if (c.step == first_step + 1) summary.first_loss = s.loss;
    summary.last_loss = s.loss;
    if (metrics && (c.step % o.log_every == 0 || c.step == max_steps))
      log_step(*metrics, s, o, opt, c);
    if (hooks.on_step) hooks.on_step(s);
    if (c.nonfinite_run >= o.max_nonfinite_steps)
      throw Error(nonfinite_message(c.nonfinite_run, c.step, last_checkpoint));

    const bool last = c.step == max_steps;
    if (ranks.main() && o.validation_steps > 0 && c.step % o.validation_steps == 0 && !last)
      validate(m, state.ema, metrics ? &*metrics : nullptr, c.step);
    // A stop asked of any rank (torchrun passes SIGTERM to each, not at the same step) stops all.
    const bool stop =
        ranks.sum({hooks.stop_requested && hooks.stop_requested->load() ? 1.0 : 0.0})[0] > 0;
    if ((o.checkpointing_steps > 0 && c.step % o.checkpointing_steps == 0) || last || stop)
      if (ranks.main() && checkpoint_allowed(c, hooks))
        last_checkpoint = save_checkpoint(
            m, state, state.trainer_state(max_steps, data.sampler().epoch(), summary.examples),
            hooks);
    if (stop && !last) {
      summary.interrupted = true;
      summary.output = last_checkpoint;
      break;
    }
  }
  summary.steps = c.step;
  summary.steps_this_run = c.step - first_step;
  summary.trainable_parameters = opt.optimizer->num_parameters();
  summary.optimizer_state_bytes = opt.optimizer->state_bytes();

  // ---- The final model -----------------------------------------------------------------------
  if (!summary.interrupted) {
    if (ranks.main()) {
      validate(m, state.ema, metrics ? &*metrics : nullptr, c.step);
      save_result(m, state.ema, summary);
    }
    summary.output = o.out;
  }
  summary.seconds = seconds_since(started);
  return summary;
}

}  // namespace sdtune::train
