#include "sdtune/train/train_options.h"

#include <cstdio>

#include "sdtune/error.h"

namespace sdtune::train {
namespace {

std::string str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

void check_options(const TrainOptions& o) {
  auto positive = [](const char* name, int64_t v) {
    if (v < 1) throw Error(std::string(name) + " must be at least 1, got " + std::to_string(v));
  };
  positive("--resolution", o.resolution);
  positive("--batch-size", o.batch_size);
  positive("--gradient-accumulation-steps", o.gradient_accumulation_steps);
  positive("--num-validation-images", o.num_validation_images);
  positive("--max-nonfinite-steps", o.max_nonfinite_steps);
  if (o.resolution % 8 != 0)
    throw Error("--resolution must be a multiple of 8, got " + std::to_string(o.resolution));
  if (o.max_steps < 0) throw Error("--max-steps must be >= 0");
  if (o.enable_bucket) {
    if (o.bucket_reso_steps < 8 || o.bucket_reso_steps % 8 != 0)
      throw Error("--bucket-reso-steps must be a positive multiple of 8, got " +
                  std::to_string(o.bucket_reso_steps));
    if (o.min_bucket_reso < o.bucket_reso_steps || o.min_bucket_reso > o.resolution ||
        o.max_bucket_reso < o.resolution)
      throw Error(
          "buckets need --bucket-reso-steps <= --min-bucket-reso <= --resolution <= "
          "--max-bucket-reso");
  }
  if (o.cache_latents && !o.center_crop && !o.enable_bucket)
    throw Error(
        "--cache-latents needs --center-crop or --enable-bucket: a random crop is a new image "
        "every step, which no cache can hold");
  if (o.cache_text_encoder_outputs && o.train_text_encoder)
    throw Error(
        "--cache-text-encoder-outputs needs a frozen text encoder: --train-text-encoder changes "
        "the outputs every step");
  if (o.optimizer != "adamw" && o.optimizer != "adafactor")
    throw Error("unknown --optimizer '" + o.optimizer + "' (expected adamw or adafactor)");
  if (o.optimizer == "adafactor" && o.adafactor.warmup_init && !o.adafactor.relative_step)
    throw Error("--adafactor-warmup-init needs --adafactor-relative-step true");
  if (o.stop_text_encoder_training < 0) throw Error("--stop-text-encoder-training must be >= 0");
  if (o.stop_text_encoder_training > 0 && !o.train_text_encoder)
    throw Error("--stop-text-encoder-training needs --train-text-encoder");
  const auto& db = o.dreambooth;
  if (db.enabled) {
    if (db.instance_prompt.empty()) throw Error("--instance-prompt is required");
    if (db.repeats < 1) throw Error("--repeats must be at least 1");
    if (o.enable_bucket) throw Error("--enable-bucket is not supported with dreambooth yet");
    if (db.with_prior_preservation) {
      if (db.class_prompt.empty())
        throw Error("--with-prior-preservation needs --class-prompt (e.g. \"a photo of a dog\")");
      if (db.class_data.empty())
        throw Error("--with-prior-preservation needs --class-data DIR (where class images are)");
      if (db.num_class_images < 1) throw Error("--num-class-images must be at least 1");
      if (!(db.prior_loss_weight >= 0)) throw Error("--prior-loss-weight must be >= 0");
    }
  }
  if (o.lora.enabled()) {
    if (*o.lora.rank < 1)
      throw Error("--lora-rank must be at least 1, got " + std::to_string(*o.lora.rank));
    if (o.lora.alpha && !(*o.lora.alpha > 0)) throw Error("--lora-alpha must be positive");
    if (!(o.lora.dropout >= 0 && o.lora.dropout < 1))
      throw Error("--lora-dropout must be in [0, 1), got " + str(o.lora.dropout));
    if (o.lora.unet_layers.empty()) throw Error("--lora-layers names no layer");
    if (o.train_text_encoder && o.lora.text_encoder_layers.empty())
      throw Error("--lora-text-encoder-layers names no layer");
    if (o.use_ema)
      throw Error("--use-ema is for full fine-tuning: a LoRA run trains adapters, not the UNet");
    if (o.save_single_file)
      throw Error(
          "--save-single-file is for full fine-tuning: a LoRA run writes lora_kohya.safetensors, "
          "which A1111 and ComfyUI load");
  }
  if (o.max_steps == 0 && o.num_train_epochs < 1) throw Error("--num-train-epochs must be >= 1");
  if (!(o.learning_rate > 0))
    throw Error("--learning-rate must be positive, got " + str(o.learning_rate));
  if (o.mixed_precision != "no" && o.mixed_precision != "fp16" && o.mixed_precision != "bf16")
    throw Error("--mixed-precision must be no, fp16 or bf16, got '" + o.mixed_precision + "'");
  if (o.snr_gamma && !(*o.snr_gamma > 0)) throw Error("--snr-gamma must be positive");
  if (o.checkpointing_steps < 0 || o.validation_steps < 0 || o.checkpoints_total_limit < 0)
    throw Error(
        "--checkpointing-steps, --validation-steps and --checkpoints-total-limit must be >= 0");
  if (o.out.empty()) throw Error("--out is required");
  if (o.data.empty()) throw Error("--data is required");
}

}  // namespace sdtune::train
