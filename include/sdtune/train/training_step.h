#pragma once
// One micro-batch of diffusion training, as diffusers' train_text_to_image.py (and, with the
// prior term, train_dreambooth.py) does it: x₀ from the VAE posterior, ε and t drawn, x_t from
// the forward process, the UNet's prediction against the prediction type's target, the MSE loss
// (min-SNR weighted; plus weight · the class half's loss with prior preservation), and backward.
// The trainer, the step-parity test driver and the training benchmark all run this code.
#include <cstdint>
#include <optional>

#include <ATen/ATen.h>

#include "sdtune/models/clip_text_model.h"
#include "sdtune/models/unet_2d_condition.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/train/loss_scaler.h"
#include "sdtune/train/training_data.h"

namespace sdtune::train {

struct StepOptions {
  schedulers::NoiseSchedule schedule;
  schedulers::PredictionType prediction_type = schedulers::PredictionType::Epsilon;
  int64_t num_train_timesteps = 1000;
  double scaling_factor = 1;  // the VAE's: latents = sample · scaling_factor
  double noise_offset = 0;
  std::optional<double> snr_gamma;  // min-SNR-γ loss weights
  // DreamBooth's prior preservation: the batch's second half is class images, whose plain MSE
  // is added with this weight.
  std::optional<double> prior_loss_weight;
  std::optional<at::ScalarType> autocast;  // mixed precision around forward and loss
};

// What one micro-batch trains on: x₀ (scaled latents), ε, t (int64 [B]) and the caption
// conditioning: text-encoder outputs (`context`), or token ids for the text encoder to encode.
// SDXL adds the second encoder's ids (or its pooled output, `text_embeds`, given with `context`)
// and each image's size/crop time ids [B, 6].
struct StepInputs {
  at::Tensor latents, noise, timesteps;
  at::Tensor context, input_ids;
  at::Tensor input_ids_2, text_embeds, time_ids;
};

// Draws from `gen`, in this order: a latent from the batch's posterior, ε (with the noise
// offset) and t. A fresh latent at every step, cached posterior or not.
StepInputs draw_step_inputs(const Batch& batch, at::Generator& gen, const StepOptions& options);

struct StepLoss {
  double loss = 0;                 // the micro-batch's loss (before any scaling)
  double instance = 0, prior = 0;  // its two terms, with prior preservation
};

// Forward, loss and backward of one micro-batch: the gradients of scaler.scale(loss / divisor)
// accumulate into the trainable parameters. The text encoder runs (with gradients when
// `text_encoder_trains`) unless the inputs carry its outputs; it may be empty then. An SDXL UNet
// (text_time) takes its context and pooled vector from both encoders (models/
// sdxl_text_conditioning.h; the second, `text_encoder_2`, is frozen) and the inputs' time ids,
// as train_text_to_image_sdxl.py feeds them.
StepLoss training_step(models::UNet2DConditionModel unet, models::CLIPTextModel text_encoder,
                       models::CLIPTextModel text_encoder_2, bool text_encoder_trains,
                       const StepInputs& inputs, const StepOptions& options,
                       const LossScaler& scaler, int64_t divisor = 1);

}  // namespace sdtune::train
