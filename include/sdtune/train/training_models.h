#pragma once
// The models of a fine-tuning run loaded from the base pipeline, frozen or trainable as the
// options say, with LoRA adapters attached for a LoRA run; and what is derived from them: the
// training step's options, the weights a save writes, the LoRA layers.
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/lora/adapters.h"
#include "sdtune/lora/lora.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/train/ema.h"
#include "sdtune/train/train_options.h"
#include "sdtune/train/training_step.h"

namespace sdtune::train {

// The models of a fine-tuning run, and what of them trains. The UNet (and the text encoder when
// trained) are fp32 master weights; with mixed precision the frozen VAE and text encoder are cast
// to the compute dtype, as train_text_to_image.py does. With LoRA every model is frozen in the
// compute dtype and only the adapters (fp32) train, as in diffusers' LoRA scripts.
struct TrainingModels {
  explicit TrainingModels(const TrainOptions& o);
  // The text encoder frozen from now on (--stop-text-encoder-training): no gradients, eval mode.
  void freeze_text_encoder();

  const TrainOptions& o;
  const c10::Device device;
  const std::optional<at::ScalarType> amp;
  const at::ScalarType weight_dtype;
  const bool lora_on, full_text_encoder;
  const io::ModelFolder base;
  const models::LoadOptions fp32, frozen;
  const text::ClipTokenizer tokenizer;
  models::UNet2DConditionModel unet;
  models::AutoencoderKL vae;
  models::CLIPTextModel text_encoder;
  // SDXL (a UNet with text_time conditioning): the second tokenizer and text encoder, frozen.
  std::optional<text::ClipTokenizer> tokenizer_2;
  models::CLIPTextModel text_encoder_2{nullptr};
  lora::AdapterSet adapters;
  const double lora_alpha;
  std::vector<at::Tensor> unet_params, te_params;  // the trainable tensors
  schedulers::SchedulerConfig scheduler;
};

// The training step's options: the noise schedule, prediction type, VAE scaling, min-SNR, the
// prior-preservation weight and the autocast dtype.
StepOptions step_options(const TrainOptions& o, const TrainingModels& m);

// The pipeline weights of a save: the EMA shadows in place of the UNet's when EMA is on.
io::SavedWeights pipeline_weights(const TrainingModels& m, const Ema* ema);

// The adapters as LoRA layers, in the names LoRA files use.
std::vector<lora::LoraLayer> lora_layers(const TrainingModels& m);

// "bf16" -> bfloat16, "fp16" -> half, else none: the autocast dtype of --mixed-precision.
std::optional<at::ScalarType> autocast_dtype(const std::string& mixed_precision);

}  // namespace sdtune::train
