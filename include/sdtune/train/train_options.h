#pragma once
// Every setting of a fine-tuning run (`sdtune train`). The names follow diffusers'
// examples/text_to_image/train_text_to_image.py (--learning_rate → learning_rate, ...), so a user
// of that script finds each option where they expect it; defaults are that script's unless noted.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "sdtune/io/image.h"
#include "sdtune/train/adafactor.h"

namespace sdtune::train {

struct TrainOptions {
  // What to train and where.
  std::filesystem::path model;  // base pipeline folder (diffusers layout)
  std::filesystem::path data;   // image folder, .parquet file or folder of parquet files
  std::filesystem::path out;    // final pipeline; checkpoint-STEP/ and logs/ inside
  std::string variant;          // load base weights *.{variant}.safetensors ("fp16")
  std::string device = "cpu";   // "cpu", "cuda", "cuda:1"

  // Data.
  std::string image_column = "image";
  std::string caption_column = "text";
  // Untrusted data: entries whose real path lies outside the dataset (or class-image) folder are
  // skipped unless allowed; images declaring more pixels than the limit are skipped undecoded.
  bool allow_outside_data = false;
  int64_t max_image_pixels = io::kMaxImagePixels;
  int64_t resolution = 512;
  bool center_crop = false;
  bool random_flip = false;
  int64_t batch_size = 16;  // per device (train_batch_size)
  // kohya's aspect-ratio buckets: each image is resized to cover the bucket (of about
  // resolution² pixels, sides multiples of bucket_reso_steps between the min and max) whose aspect
  // ratio is closest to its own, then center-cropped to it; a batch holds one bucket.
  bool enable_bucket = false;
  int64_t min_bucket_reso = 256, max_bucket_reso = 1024, bucket_reso_steps = 64;
  // Caches (kohya's --cache_latents_to_disk, --cache_text_encoder_outputs_to_disk): VAE posteriors
  // of the images and the frozen text encoder's caption embeddings, computed once, kept in
  // cache_dir (default io::default_cache_dir()) keyed by content and settings, reused by later
  // runs. Latents need a deterministic crop (center_crop or enable_bucket); text embeddings a
  // frozen text encoder.
  bool cache_latents = false;
  bool cache_text_encoder_outputs = false;
  std::filesystem::path cache_dir;

  // Schedule of the run: max_steps optimizer steps; 0 = num_train_epochs full passes.
  int64_t max_steps = 0;
  int64_t num_train_epochs = 100;
  int64_t gradient_accumulation_steps = 1;

  // Optimizer and learning rate.
  double learning_rate = 1e-4;
  bool scale_lr = false;  // lr × accumulation × batch size × processes
  std::string lr_scheduler = "constant";
  int64_t lr_warmup_steps = 500;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_weight_decay = 1e-2, adam_epsilon = 1e-8;
  // "adamw", or "adafactor": transformers' Adafactor (train/adafactor.h), whose factored second
  // moment needs a fraction of AdamW's memory. With relative steps (its default) the step size
  // comes from the step count and the parameters' scale: --learning-rate and --lr-scheduler are
  // then not used.
  std::string optimizer = "adamw";
  AdafactorOptions adafactor;
  double adafactor_weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0 disables clipping

  // Text encoder (off by default, as in train_text_to_image.py).
  bool train_text_encoder = false;
  std::optional<double> text_encoder_lr;  // default: learning_rate
  // kohya's --stop_text_encoder_training: from this optimizer step on the text encoder is frozen
  // (0: trained to the end).
  int64_t stop_text_encoder_training = 0;

  // Loss.
  std::string prediction_type;  // "" = the scheduler config's; "epsilon" | "v_prediction"
  std::optional<double> snr_gamma;
  double noise_offset = 0.0;

  // Precision and memory.
  std::string mixed_precision = "no";  // "no" | "fp16" | "bf16"
  bool gradient_checkpointing = false;
  // Deterministic GPU kernels (train/determinism.h): bit-for-bit resume on CUDA, at some speed.
  bool deterministic = false;
  // Speed levers (issue: GPU speed): the UNet's and VAE's convolutions channels-last
  // (models/memory_format.h); the attention kernel tried first (models/attention_backend.h).
  bool channels_last = false;
  std::string attention_backend = "auto";

  // EMA of the UNet weights.
  bool use_ema = false;
  // Besides the diffusers folder, OUT/model.safetensors (and one in each checkpoint) in the
  // single-file layout of A1111 and ComfyUI (formats/single_file.h). Full fine-tuning of SD 1.x.
  bool save_single_file = false;
  double ema_decay = 0.9999;
  bool ema_warmup = false;  // diffusers EMAModel use_ema_warmup (inv_gamma 1, power 2/3)
  bool offload_ema = false;

  // Checkpoints.
  int64_t checkpointing_steps = 500;    // 0 = only at the end
  int64_t checkpoints_total_limit = 0;  // 0 = keep all
  std::string resume_from_checkpoint;   // "" | "latest" | a checkpoint folder

  // Validation.
  std::vector<std::string> validation_prompts;
  int64_t validation_steps = 0;  // 0 = only at the end, when prompts are given
  int64_t num_validation_images = 1;
  int64_t validation_inference_steps = 20;
  double validation_guidance_scale = 7.5;

  // Non-finite losses: stop after this many optimizer steps in a row that had one.
  int64_t max_nonfinite_steps = 5;

  // Data-parallel runs (launched by torchrun, mpirun or srun): how long a rank waits for the
  // others, at the rendezvous and in each collective, before it gives up with an error.
  double ddp_timeout = 300;  // seconds
  // Their collectives: "nccl" (GPUs) or "gloo" (CPUs, or GPUs through host copies); empty picks
  // NCCL for a CUDA device and Gloo otherwise.
  std::string ddp_backend;

  // DreamBooth (`sdtune dreambooth`, diffusers' train_dreambooth.py): `data` holds the instance
  // images, all captioned `instance_prompt`. With prior preservation every batch also carries as
  // many class images (class_data, captioned `class_prompt`; missing ones up to
  // num_class_images are generated first with the base model), and the loss is
  // instance loss + prior_loss_weight · class loss. An epoch is max(instances, class images) pairs.
  struct DreamBooth {
    bool enabled = false;
    std::string instance_prompt;
    bool with_prior_preservation = false;
    std::filesystem::path class_data;
    std::string class_prompt;
    int64_t num_class_images = 100;
    double prior_loss_weight = 1.0;
    // kohya's repeats: each instance image appears this many times per epoch (class images pair
    // with them as before: an epoch is max(repeats · instances, class images) pairs).
    int64_t repeats = 1;
    int64_t class_inference_steps = 50;
    double class_guidance_scale = 7.5;
  } dreambooth;

  // LoRA (diffusers' train_text_to_image_lora.py / train_dreambooth_lora.py, kohya's
  // networks.lora): with a rank, the UNet and text encoder stay frozen in the compute dtype and
  // low-rank branches, float32, on the named layers (module-path suffixes, as PEFT's
  // target_modules) are trained instead; the text encoder's only with train_text_encoder.
  // Checkpoints hold the adapters, the result is OUT/pytorch_lora_weights.safetensors (diffusers)
  // and OUT/lora_kohya.safetensors.
  struct Lora {
    std::optional<int64_t> rank;  // none: full fine-tuning
    std::optional<double> alpha;  // default: the rank (scale 1, as diffusers' scripts)
    double dropout = 0.0;
    std::vector<std::string> unet_layers{"to_q", "to_k", "to_v", "to_out.0"};
    std::vector<std::string> text_encoder_layers{"q_proj",   "k_proj", "v_proj",
                                                 "out_proj", "fc1",    "fc2"};
    bool enabled() const { return rank.has_value(); }
  } lora;

  uint64_t seed = 0;
  int64_t log_every = 1;  // JSONL/TensorBoard every N optimizer steps

  // The effective configuration as the CLI would read it back (TOML), saved with each
  // checkpoint; empty = not saved.
  std::string effective_config;
};

// An Error naming the flag for options that cannot work together or are out of range.
void check_options(const TrainOptions& options);

}  // namespace sdtune::train
