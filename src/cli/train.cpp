// sdtune train: full fine-tuning on a captioned dataset. Flags are named as in diffusers'
// train_text_to_image.py (in kebab-case; the script's own spelling is accepted where it differs)
// and every flag is also a key of the TOML file given with --config.

#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/stop_signal.h"
#include "cli/toml_config.h"
#include "cli/training_flags.h"
#include "sdtune/distributed/launch_environment.h"
#include "sdtune/error.h"
#include "sdtune/models/single_file.h"
#include "sdtune/train/trainer.h"
#include "sdtune/warning.h"

namespace sdtune::cli {
namespace {

struct Flags : TrainingFlags {
  bool dreambooth = false;  // `sdtune dreambooth`: instance data and prompt, prior preservation
  train::TrainOptions o;
  std::string cache_dir, class_data;
  std::optional<double> text_encoder_lr, snr_gamma, lora_alpha;
  std::optional<int64_t> lora_rank;
  bool ema_weights = false;  // a single-file --model: its EMA UNet
};

void add_options(CLI::App* cmd, Flags& f) {
  auto& o = f.o;
  if (f.dreambooth)
    add_training_options(cmd, f, o, "--instance-data,--instance-data-dir",
                         "Folder of the concept's images (required)",
                         "Output folder: final model, checkpoints, logs (required)");
  else
    add_training_options(cmd, f, o, "--data,--train-data-dir",
                         "Image folder (metadata.jsonl or .txt captions), .parquet file or folder "
                         "(required)",
                         "Output folder: final model, checkpoints, logs (required)");
  if (f.dreambooth) {
    auto& db = o.dreambooth;
    cmd->add_option("--instance-prompt", db.instance_prompt,
                    "Prompt with the rare identifier, e.g. \"a photo of sks dog\" (required)");
    cmd->add_flag("--with-prior-preservation", db.with_prior_preservation,
                  "Train on class images too, so the class is not forgotten");
    cmd->add_option("--class-prompt", db.class_prompt, "e.g. \"a photo of a dog\"");
    cmd->add_option("--class-data,--class-data-dir", f.class_data,
                    "Folder of class images; missing ones are generated with the base model");
    cmd->add_option("--num-class-images", db.num_class_images)
        ->capture_default_str()
        ->check(checks::at_least(1));
    cmd->add_option("--prior-loss-weight", db.prior_loss_weight)
        ->capture_default_str()
        ->check(checks::non_negative());
    cmd->add_option("--repeats", db.repeats, "Times each instance image appears per epoch (kohya)")
        ->capture_default_str()
        ->check(checks::at_least(1));
    cmd->add_option("--class-inference-steps", db.class_inference_steps,
                    "Denoising steps per generated class image")
        ->capture_default_str()
        ->check(checks::at_least(1));
    cmd->add_option("--class-guidance-scale", db.class_guidance_scale)->capture_default_str();
  }
  cmd->add_flag("--enable-bucket", o.enable_bucket,
                "Aspect-ratio buckets (kohya): no square crop, one bucket per batch");
  cmd->add_option("--min-bucket-reso", o.min_bucket_reso)
      ->capture_default_str()
      ->check(checks::at_least(8));
  cmd->add_option("--max-bucket-reso", o.max_bucket_reso)
      ->capture_default_str()
      ->check(checks::at_least(8));
  cmd->add_option("--bucket-reso-steps", o.bucket_reso_steps)
      ->capture_default_str()
      ->check(checks::at_least(8));

  cmd->add_flag("--cache-latents", o.cache_latents,
                "Encode each image with the VAE once and keep its latent distribution on disk "
                "(needs --center-crop or --enable-bucket)");
  cmd->add_flag("--cache-text-encoder-outputs", o.cache_text_encoder_outputs,
                "Encode each caption once and keep the embedding on disk (frozen text encoder)");
  cmd->add_option("--cache-dir", f.cache_dir,
                  "Where caches live, shared by runs (default $SDTUNE_CACHE_DIR, "
                  "$XDG_CACHE_HOME/sdtune or ~/.cache/sdtune)");

  add_optimizer_options(cmd, o, "Optimizer steps (0: --num-train-epochs passes over the data)");
  cmd->add_option("--num-train-epochs", o.num_train_epochs)
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--gradient-accumulation-steps", o.gradient_accumulation_steps)
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_flag("--scale-lr", o.scale_lr, "lr × accumulation × batch size");
  cmd->add_option("--lr-scheduler", o.lr_scheduler,
                  "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, "
                  "polynomial")
      ->capture_default_str();
  cmd->add_option("--adam-beta1", o.adam_beta1)->capture_default_str()->check(checks::below_one());
  cmd->add_option("--adam-beta2", o.adam_beta2)->capture_default_str()->check(checks::below_one());
  cmd->add_option("--adam-epsilon", o.adam_epsilon)
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--optimizer", o.optimizer,
                  "adamw, or adafactor (transformers' Adafactor: a factored second moment, for "
                  "full SDXL fine-tuning in less memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"adamw", "adafactor"}));
  auto& af = o.adafactor;
  cmd->add_option("--adafactor-relative-step", af.relative_step,
                  "Step size from the step count, min(1e-2, 1/sqrt(t)); --learning-rate and "
                  "--lr-scheduler are then unused")
      ->capture_default_str();
  cmd->add_option("--adafactor-scale-parameter", af.scale_parameter,
                  "Scale the step by the parameter's RMS (at least --adafactor-eps2)")
      ->capture_default_str();
  cmd->add_flag("--adafactor-warmup-init", af.warmup_init,
                "Relative steps that grow from 1e-6·t (needs --adafactor-relative-step true)");
  cmd->add_option("--adafactor-decay-rate", af.decay_rate,
                  "Second-moment decay: beta2_t = 1 - t^rate")
      ->capture_default_str()
      ->check(checks::in_range(-1, 0));
  cmd->add_option("--adafactor-clip-threshold", af.clip_threshold, "Update clipping by RMS")
      ->capture_default_str()
      ->check(checks::positive());
  cmd->add_option("--adafactor-beta1", af.beta1, "A first moment with this decay (default: none)")
      ->check(checks::below_one());
  cmd->add_option("--adafactor-eps1", af.eps1, "Added to the squared gradient")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--adafactor-eps2", af.eps2, "Floor of the parameter scale")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--adafactor-weight-decay", o.adafactor_weight_decay)
      ->capture_default_str()
      ->check(checks::non_negative());

  cmd->add_flag("--train-text-encoder", o.train_text_encoder);
  cmd->add_option("--text-encoder-lr", f.text_encoder_lr, "(default: --learning-rate)")
      ->check(checks::positive());
  cmd->add_option("--stop-text-encoder-training", o.stop_text_encoder_training,
                  "Freeze the text encoder from this step on (0: train it to the end)")
      ->capture_default_str()
      ->check(checks::non_negative());

  cmd->add_option("--prediction-type", o.prediction_type,
                  "epsilon or v_prediction (default: the scheduler config's; for a single-file "
                  "--model, SD 1.x epsilon and SD 2.x v_prediction)");
  cmd->add_flag(
      "--ema-weights", f.ema_weights,
      "For a single-file --model with EMA weights (model_ema.*): start from its EMA UNet");
  cmd->add_option("--snr-gamma", f.snr_gamma, "Min-SNR-γ loss weighting (5.0 is usual)")
      ->check(checks::positive());
  cmd->add_option("--noise-offset", o.noise_offset)
      ->capture_default_str()
      ->check(checks::non_negative());

  cmd->add_option("--mixed-precision", o.mixed_precision, "no, fp16 or bf16")
      ->capture_default_str();
  cmd->add_flag("--gradient-checkpointing", o.gradient_checkpointing);
  cmd->add_flag("--deterministic", o.deterministic,
                "Deterministic GPU kernels (cuBLAS, cuDNN, attention backward): a resumed run "
                "equals the straight one bit for bit on CUDA too; slower");
  cmd->add_flag("--channels-last", o.channels_last,
                "Run the UNet's and VAE's convolutions channels-last (NHWC), cuDNN's tensor-core "
                "layout; same values");
  cmd->add_option("--attention-backend", o.attention_backend,
                  "Attention kernel tried first on a GPU: auto (PyTorch's order), flash, cudnn, "
                  "efficient or math")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "flash", "cudnn", "efficient", "math"}));
  cmd->add_flag("--use-ema", o.use_ema, "Keep an EMA of the UNet weights (saved as the model)");
  cmd->add_flag("--save-single-file", o.save_single_file,
                "Also write OUT/model.safetensors (and one per checkpoint) in the A1111/ComfyUI "
                "single-file layout");
  cmd->add_option("--ema-decay", o.ema_decay)->capture_default_str()->check(checks::in_range(0, 1));
  cmd->add_flag("--ema-warmup", o.ema_warmup, "EMA decay warmup (1 - (1 + step)^(-2/3))");
  cmd->add_flag("--offload-ema", o.offload_ema, "Keep the EMA weights in CPU memory");

  cmd->add_option("--checkpointing-steps", o.checkpointing_steps,
                  "Save OUT/checkpoint-STEP every N steps (0: only at the end)")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--checkpoints-total-limit", o.checkpoints_total_limit,
                  "Keep the last K checkpoints (0: all)")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--resume-from-checkpoint", o.resume_from_checkpoint, "latest or a folder");

  cmd->add_option("--validation-prompt", o.validation_prompts, "Prompt to sample (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--validation-steps", o.validation_steps,
                  "Sample the validation prompts every N steps (and at the end)")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--num-validation-images", o.num_validation_images)
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--validation-inference-steps", o.validation_inference_steps)
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--validation-guidance-scale", o.validation_guidance_scale)
      ->capture_default_str();

  cmd->add_option("--max-nonfinite-steps", o.max_nonfinite_steps,
                  "Stop after this many steps in a row with a NaN/inf loss")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--ddp-timeout", o.ddp_timeout,
                  "Data-parallel runs: seconds a rank waits for the others before it fails")
      ->capture_default_str()
      ->check(checks::positive());
  cmd->add_option("--ddp-backend", o.ddp_backend,
                  "Data-parallel runs: nccl|gloo (default: nccl on CUDA, gloo on CPU)")
      ->check(CLI::IsMember({"nccl", "gloo"}));
  cmd->add_option("--lora-rank,--rank", f.lora_rank,
                  "Train LoRA adapters of this rank instead of the whole model (e.g. 4-128)")
      ->check(checks::at_least(1));
  cmd->add_option("--lora-alpha", f.lora_alpha,
                  "LoRA alpha: updates scale by alpha/rank (default: rank)")
      ->check(checks::positive());
  cmd->add_option("--lora-dropout", o.lora.dropout)
      ->capture_default_str()
      ->check(checks::below_one());
  cmd->add_option("--lora-layers", o.lora.unet_layers,
                  "UNet layers that get adapters (module-path suffixes, comma-separated; also "
                  "proj_in, proj_out, ff.net.0.proj, ff.net.2, and LoCon's conv1, conv2, "
                  "conv_shortcut, conv)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--lora-text-encoder-layers", o.lora.text_encoder_layers,
                  "Text-encoder layers that get adapters with --train-text-encoder")
      ->delimiter(',')
      ->capture_default_str();
  add_run_options(cmd, f, o);
}

void run(CLI::App* cmd, Flags& f) {
  auto& o = f.o;
  finish_training_flags(cmd, f, o, f.dreambooth ? "--instance-data" : "--data");
  o.cache_dir = f.cache_dir;
  o.dreambooth.enabled = f.dreambooth;
  o.dreambooth.class_data = f.class_data;
  o.text_encoder_lr = f.text_encoder_lr;
  o.snr_gamma = f.snr_gamma;
  o.lora.rank = f.lora_rank;
  o.lora.alpha = f.lora_alpha;
  // The effective configuration, as a --config file that reproduces this run.
  o.effective_config = effective_config(cmd, {"quiet"});
  // A single-file --model is read once into a folder in the cache, which training starts from.
  o.model = models::open_model(o.model,
                               {.prediction_type = o.prediction_type, .ema_weights = f.ema_weights})
                .root()
                .string();

  train::TrainHooks hooks;
  StopOnSignal stop;  // Ctrl-C: save a checkpoint, exit cleanly
  hooks.stop_requested = stop.flag();
  // In a data-parallel run rank 0 speaks for all; the others are silent unless they fail. Each
  // rank takes its machine's GPU number LOCAL_RANK when told "cuda" (torchrun's convention).
  const distributed::LaunchEnvironment launch = distributed::launch_environment();
  const bool main_rank = launch.rank == 0;
  if (launch.distributed() && o.device == "cuda")
    o.device = "cuda:" + std::to_string(launch.local_rank);
  if (!main_rank) set_warning_sink(nullptr);  // rank 0 warns about the files all ranks read
  Progress progress("train", f.quiet || !main_rank, /*log_lines=*/true);
  hooks.message = [&](const std::string& m) {
    if (main_rank) progress.message(m);
  };
  hooks.on_step = [&](const train::StepMetrics& m) {
    char status[160];
    std::snprintf(status, sizeof status, "loss %.4f  lr %.3g%s", m.loss, m.lr,
                  m.skipped ? "  (step skipped: non-finite)" : "");
    progress.update(m.step, m.max_steps, status);
  };

  train::TrainSummary s;
  try {
    s = train::train(o, hooks);
  } catch (...) {
    progress.finish();
    throw;
  }
  progress.finish();
  if (!main_rank) return;

  // The run summary, on stdout.
  print_examples(s.examples, s.skipped);
  if (f.dreambooth)
    std::printf("instance examples: %lld, class examples: %lld\n",
                static_cast<long long>(s.instance_examples),
                static_cast<long long>(s.class_examples));
  if (o.dreambooth.with_prior_preservation)
    std::printf("class images: %lld found, %lld generated\n",
                static_cast<long long>(s.class_images_found),
                static_cast<long long>(s.class_images_generated));
  for (const auto& [bucket, n] : s.buckets)
    std::printf("  bucket %s: %lld examples\n", bucket.c_str(), static_cast<long long>(n));
  if (o.cache_latents)
    std::printf("latent cache: %lld read, %lld computed\n",
                static_cast<long long>(s.latent_cache_hits),
                static_cast<long long>(s.latent_cache_computed));
  if (o.cache_text_encoder_outputs)
    std::printf("text embedding cache: %lld read, %lld computed\n",
                static_cast<long long>(s.text_cache_hits),
                static_cast<long long>(s.text_cache_computed));
  std::printf("steps: %lld (this run %lld, non-finite skipped %lld)\n",
              static_cast<long long>(s.steps), static_cast<long long>(s.steps_this_run),
              static_cast<long long>(s.skipped_steps));
  if (s.steps_this_run > 0) std::printf("loss: first %.6f, last %.6f\n", s.first_loss, s.last_loss);
  std::printf("trainable parameters: %lld (optimizer state %.1f MiB)\n",
              static_cast<long long>(s.trainable_parameters),
              static_cast<double>(s.optimizer_state_bytes) / (1 << 20));
  std::printf("time: %s\n", format_duration(s.seconds).c_str());
  if (s.interrupted)
    std::printf(
        "interrupted: checkpoint saved to %s; continue with --resume-from-checkpoint "
        "latest\n",
        s.output.string().c_str());
  else if (!s.lora_files.empty())
    for (const auto& file : s.lora_files) std::printf("lora: %s\n", file.string().c_str());
  else
    std::printf("model: %s\n", s.output.string().c_str());
  if (!s.single_file.empty()) std::printf("single file: %s\n", s.single_file.string().c_str());
}

}  // namespace

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Fine-tune a Stable Diffusion model on captioned images");
  auto flags = std::make_shared<Flags>();
  add_options(cmd, *flags);
  cmd->callback([cmd, flags] { run(cmd, *flags); });
}

// The same loop on a DreamBooth dataset (diffusers' train_dreambooth.py): every train option
// applies; the defaults that differ are train_dreambooth.py's (learning rate 5e-6, batch 4).
void add_dreambooth(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "dreambooth", "Teach a model a concept from a few images (DreamBooth, prior preservation)");
  auto flags = std::make_shared<Flags>();
  flags->dreambooth = true;
  flags->o.learning_rate = 5e-6;
  flags->o.batch_size = 4;
  add_options(cmd, *flags);
  cmd->callback([cmd, flags] { run(cmd, *flags); });
}

}  // namespace sdtune::cli
