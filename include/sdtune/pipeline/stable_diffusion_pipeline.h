#pragma once
// Text-to-image and image-to-image generation with a Stable Diffusion pipeline folder, step for
// step as diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline compute it (and
// StableDiffusionXLPipeline for SDXL folders): the same prompt encoding, classifier-free guidance,
// scheduler loop and random draws, so that the same seed gives the same image.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/pipeline/cuda_graph_unet.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/text/clip_tokenizer.h"

namespace sdtune::pipeline {

struct GenerateOptions {
  std::string prompt;
  std::string negative_prompt;  // "" = unconditional, as diffusers' default (SDXL: zeros, below)
  // SDXL: the second text encoder's prompts; "" = the same as the first.
  std::string prompt_2, negative_prompt_2;
  // SDXL's micro-conditioning, (height, width) pairs: the size the training image had, the
  // top-left corner of its crop and the size asked for. Empty: (height, width), (0, 0) and
  // (height, width). The negative ones apply to the unconditional half of guidance; they are used
  // when both sizes are given, as in diffusers.
  std::vector<int64_t> original_size, crops_coords_top_left, target_size;
  std::vector<int64_t> negative_original_size, negative_crops_coords_top_left, negative_target_size;
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

// What a prompt gives the UNet: the context for cross-attention, [N, 77, D] (with guidance,
// [negative; positive] stacked), and for SDXL the second encoder's projected pooled output
// [N, P], stacked the same way.
struct PromptEmbeddings {
  at::Tensor context;
  at::Tensor pooled;  // SDXL only
};

// Called after each denoising step with (step index from 0, number of steps).
using StepCallback = std::function<void(int64_t, int64_t)>;
// Called after each denoising step with the latents [N,C,h,w] so far (on the model's device): a
// live preview. A callback may throw to stop the generation.
using LatentCallback = std::function<void(const at::Tensor&)>;

class StableDiffusionPipeline {
 public:
  // Loads tokenizer, text encoder, UNet and VAE from `folder` on device/dtype, and the scheduler
  // named `scheduler` ("" = the folder's own) with the folder's scheduler config.
  StableDiffusionPipeline(const io::ModelFolder& folder, const models::LoadOptions& options,
                          const std::string& scheduler = "", bool karras = false);

  // Generates with models already in memory (validation during training: the weights being
  // trained, shared, not copied); the tokenizers and scheduler config come from `folder`, and
  // SDXL's second text encoder too unless given.
  StableDiffusionPipeline(const io::ModelFolder& folder, const models::LoadOptions& options,
                          models::CLIPTextModel text_encoder, models::UNet2DConditionModel unet,
                          models::AutoencoderKL vae,
                          models::CLIPTextModel text_encoder_2 = models::CLIPTextModel{nullptr},
                          const std::string& scheduler = "");

  // The prompt's embeddings for options.num_images images (see PromptEmbeddings).
  PromptEmbeddings encode_prompt(const GenerateOptions& options, bool* truncated = nullptr);

  // Images as uint8 [N,H,W,3] on the CPU.
  at::Tensor generate(const GenerateOptions& options, const StepCallback& on_step = {});
  // The same with the prompt embeddings already made by encode_prompt(options): a caller that
  // needs to know whether the prompt was truncated encodes it once, not twice.
  at::Tensor generate(const GenerateOptions& options, const PromptEmbeddings& prompt_embeddings,
                      const StepCallback& on_step = {}, const LatentCallback& on_latents = {});

  // Replaces the scheduler: `name` as --scheduler takes it ("" = the folder's own), with the
  // folder's scheduler config (e.g. a server's per-request sampler).
  void set_scheduler(const std::string& name, bool karras);

  // The denoising loop's UNet calls replayed from CUDA graphs (pipeline/cuda_graph_unet.h), one
  // per image size and batch, captured on first use; off: plain calls. An Error unless the
  // pipeline is on a CUDA device and the build has CUDA.
  void set_cuda_graphs(bool on);
  // The UNet's and VAE's convolution weights laid out channels-last (models/memory_format.h), and
  // with them the activations: the layout cuDNN's tensor-core kernels run in. Same values.
  void use_channels_last();

  // An SDXL pipeline: two text encoders and a UNet with text_time conditioning.
  bool is_xl() const { return unet_->config.text_time_embedding; }

  int64_t vae_scale_factor() const;
  // The models themselves (shared, not copied): e.g. to merge a LoRA into them.
  models::UNet2DConditionModel& unet() { return unet_; }
  models::CLIPTextModel& text_encoder() { return text_encoder_; }
  models::CLIPTextModel& text_encoder_2() { return text_encoder_2_; }  // SDXL; else null
  const schedulers::Scheduler& scheduler() const { return *scheduler_; }
  const schedulers::SchedulerConfig& scheduler_config() const { return scheduler_config_; }
  // The scheduler's name as A1111-style tools label it ("PNDM", "Euler a", "DPM++ 2M Karras", ...).
  std::string sampler_label() const;

 private:
  // Loads what SDXL adds (tokenizer_2, text_encoder_2, force_zeros_for_empty_prompt) when the
  // UNet has text_time conditioning, and the VAE's dtype.
  void load_xl_parts(const io::ModelFolder& folder);
  PromptEmbeddings encode_prompt_xl(const GenerateOptions& options, bool* truncated);
  // SDXL's time ids for the stacked batch: [N or 2N, 6].
  at::Tensor time_ids(const GenerateOptions& options, int64_t height, int64_t width) const;

  models::LoadOptions load_;
  text::ClipTokenizer tokenizer_;
  models::CLIPTextModel text_encoder_{nullptr};
  std::optional<text::ClipTokenizer> tokenizer_2_;
  models::CLIPTextModel text_encoder_2_{nullptr};
  bool force_zeros_for_empty_prompt_ = true;
  at::ScalarType vae_dtype_ = at::kFloat;
  models::UNet2DConditionModel unet_{nullptr};
  models::AutoencoderKL vae_{nullptr};
  schedulers::SchedulerConfig scheduler_config_;  // the folder's
  std::unique_ptr<schedulers::Scheduler> scheduler_;
  std::unique_ptr<CudaGraphUNet> cuda_graph_unet_;  // set_cuda_graphs(true)
  std::string scheduler_name_;
};

}  // namespace sdtune::pipeline
