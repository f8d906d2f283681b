#pragma once
// Text-to-image and image-to-image generation with a Stable Diffusion pipeline folder, step for
// step as diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline compute it: the same
// prompt encoding, classifier-free guidance, scheduler loop and random draws, so that the same
// seed gives the same image.
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/text/clip_tokenizer.h"

namespace sdtune::pipeline {

struct GenerateOptions {
  std::string prompt;
  std::string negative_prompt;  // "" = unconditional, as diffusers' default
  int64_t steps = 50;
  double guidance_scale = 7.5;    // classifier-free guidance is on when > 1
  int64_t width = 0, height = 0;  // 0: unet.sample_size × VAE factor; multiples of 8
  int64_t num_images = 1;
  uint64_t seed = 0;
  int64_t clip_skip = 0;                 // 0: last layer; k: the output k layers before it
  double eta = 0.0;                      // DDIM only
  std::optional<at::Tensor> init_image;  // img2img: uint8 [H,W,3]
  double strength = 0.8;                 // img2img: fraction of the schedule that is re-noised
};

// Called after each denoising step with (step index from 0, number of steps).
using StepCallback = std::function<void(int64_t, int64_t)>;

class StableDiffusionPipeline {
 public:
  // Loads tokenizer, text encoder, UNet and VAE from `folder` on device/dtype, and the scheduler
  // named `scheduler` ("" = the folder's own) with the folder's scheduler config.
  StableDiffusionPipeline(const io::ModelFolder& folder, const models::LoadOptions& options,
                          const std::string& scheduler = "", bool karras = false);

  // Generates with models already in memory (validation during training: the weights being
  // trained, shared, not copied); the tokenizer and scheduler config come from `folder`.
  StableDiffusionPipeline(const io::ModelFolder& folder, const models::LoadOptions& options,
                          models::CLIPTextModel text_encoder, models::UNet2DConditionModel unet,
                          models::AutoencoderKL vae, const std::string& scheduler = "");

  // Prompt embeddings [B·num_images, 77, D]; with guidance, [negative; positive] stacked.
  at::Tensor encode_prompt(const GenerateOptions& options, bool* truncated = nullptr);

  // Images as uint8 [N,H,W,3] on the CPU.
  at::Tensor generate(const GenerateOptions& options, const StepCallback& on_step = {});
  // The same with the prompt embeddings already made by encode_prompt(options): a caller that
  // needs to know whether the prompt was truncated encodes it once, not twice.
  at::Tensor generate(const GenerateOptions& options, const at::Tensor& prompt_embeddings,
                      const StepCallback& on_step = {});

  int64_t vae_scale_factor() const;
  // The models themselves (shared, not copied): e.g. to merge a LoRA into them.
  models::UNet2DConditionModel& unet() { return unet_; }
  models::CLIPTextModel& text_encoder() { return text_encoder_; }
  const schedulers::Scheduler& scheduler() const { return *scheduler_; }
  // The scheduler's name as A1111-style tools label it ("PNDM", "Euler a", "DPM++ 2M Karras", ...).
  std::string sampler_label() const;

 private:
  models::LoadOptions load_;
  text::ClipTokenizer tokenizer_;
  models::CLIPTextModel text_encoder_{nullptr};
  models::UNet2DConditionModel unet_{nullptr};
  models::AutoencoderKL vae_{nullptr};
  std::unique_ptr<schedulers::Scheduler> scheduler_;
  std::string scheduler_name_;
};

}  // namespace sdtune::pipeline
