#include "sdtune/pipeline/stable_diffusion_pipeline.h"
#include "sdtune/models/memory_format.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "sdtune/error.h"
#include "sdtune/io/pixels.h"
#include "sdtune/models/sdxl_text_conditioning.h"

namespace sdtune::pipeline {

StableDiffusionPipeline::StableDiffusionPipeline(const io::ModelFolder& folder,
                                                 const models::LoadOptions& options,
                                                 const std::string& scheduler, bool karras)
    : load_(options), tokenizer_(text::ClipTokenizer::from_pipeline(folder)) {
  text_encoder_ = models::load_text_encoder(folder, options);
  unet_ = models::load_unet(folder, options);
  models::LoadOptions vae_options = options;
  // diffusers runs a force_upcast VAE (SDXL's, which overflows in fp16) in fp32 when the pipeline
  // is fp16; here it is loaded in fp32 straight from its file.
  if (options.dtype == at::kHalf &&
      models::AutoencoderKLConfig::from_json(folder.component_config("vae")).force_upcast)
    vae_options.dtype = at::kFloat;
  vae_ = models::load_vae(folder, vae_options);
  load_xl_parts(folder);
  scheduler_config_ = schedulers::SchedulerConfig::from_json(folder.component_config("scheduler"));
  set_scheduler(scheduler, karras);
}

void StableDiffusionPipeline::set_scheduler(const std::string& name, bool karras) {
  scheduler_name_ = schedulers::resolve_scheduler_name(name, scheduler_config_);
  scheduler_ = schedulers::make_scheduler(scheduler_name_, scheduler_config_, karras);
}

StableDiffusionPipeline::StableDiffusionPipeline(
    const io::ModelFolder& folder, const models::LoadOptions& options,
    models::CLIPTextModel text_encoder, models::UNet2DConditionModel unet,
    models::AutoencoderKL vae, models::CLIPTextModel text_encoder_2, const std::string& scheduler)
    : load_(options),
      tokenizer_(text::ClipTokenizer::from_pipeline(folder)),
      text_encoder_(std::move(text_encoder)),
      text_encoder_2_(std::move(text_encoder_2)),
      unet_(std::move(unet)),
      vae_(std::move(vae)) {
  load_xl_parts(folder);
  scheduler_config_ = schedulers::SchedulerConfig::from_json(folder.component_config("scheduler"));
  set_scheduler(scheduler, false);
}

void StableDiffusionPipeline::load_xl_parts(const io::ModelFolder& folder) {
  vae_dtype_ = vae_->parameters().front().scalar_type();
  if (!is_xl()) return;
  tokenizer_2_ = text::ClipTokenizer::load(folder.component_dir("tokenizer_2"));
  if (!text_encoder_2_)
    text_encoder_2_ = models::load_text_encoder(folder, load_, "text_encoder_2");
  if (text_encoder_2_->config.projection_dim == 0)
    throw Error("an SDXL pipeline's second text encoder must be a CLIPTextModelWithProjection",
                (folder.root() / "text_encoder_2" / "config.json").string(), "architectures");
  force_zeros_for_empty_prompt_ =
      folder.model_index().get_bool("force_zeros_for_empty_prompt", true);
}

int64_t StableDiffusionPipeline::vae_scale_factor() const {
  return int64_t{1} << (vae_->config.vae.block_out_channels.size() - 1);
}

std::string StableDiffusionPipeline::sampler_label() const {
  return schedulers::sampler_label(scheduler_name_, scheduler_->config());
}

PromptEmbeddings StableDiffusionPipeline::encode_prompt(const GenerateOptions& o, bool* truncated) {
  if (is_xl()) return encode_prompt_xl(o, truncated);
  // SDXL's options would be silently ignored by an SD 1.x/2.x model.
  if (!o.prompt_2.empty() || !o.negative_prompt_2.empty() || !o.original_size.empty() ||
      !o.crops_coords_top_left.empty() || !o.target_size.empty() ||
      !o.negative_original_size.empty() || !o.negative_crops_coords_top_left.empty() ||
      !o.negative_target_size.empty())
    throw Error(
        "the second prompts and the size/crop conditioning apply to SDXL models only; this "
        "model's UNet has no text_time conditioning");
  c10::InferenceMode inference;
  const int64_t layers = text_encoder_->config.num_hidden_layers;
  if (o.clip_skip < 0 || o.clip_skip >= layers)
    throw Error("clip skip " + std::to_string(o.clip_skip) + " out of range [0, " +
                std::to_string(layers) + ")");
  // clip_skip k: hidden_states[-(k+1)] through the final layer norm, as diffusers' encode_prompt.
  auto encode = [&](const std::string& text, int64_t clip_skip, bool* cut) {
    auto ids = tokenizer_.encode_padded(text, cut);
    at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0).to(load_.device);
    if (clip_skip == 0) return text_encoder_->forward(input).last_hidden_state;
    auto out = text_encoder_->forward(input, /*output_hidden_states=*/true);
    return text_encoder_->final_layer_norm->forward(
        out.hidden_states[out.hidden_states.size() - 1 - clip_skip]);
  };
  at::Tensor positive = encode(o.prompt, o.clip_skip, truncated).repeat({o.num_images, 1, 1});
  if (o.guidance_scale <= 1.0) return {positive, {}};
  // diffusers encodes the negative prompt without clip skip.
  at::Tensor negative = encode(o.negative_prompt, 0, nullptr).repeat({o.num_images, 1, 1});
  return {at::cat({negative, positive}), {}};
}

PromptEmbeddings StableDiffusionPipeline::encode_prompt_xl(const GenerateOptions& o,
                                                           bool* truncated) {
  c10::InferenceMode inference;
  const int64_t layers =
      std::min(text_encoder_->config.num_hidden_layers, text_encoder_2_->config.num_hidden_layers);
  if (o.clip_skip < 0 || o.clip_skip >= layers)
    throw Error("clip skip " + std::to_string(o.clip_skip) + " out of range [0, " +
                std::to_string(layers) + ")");
  auto encode = [&](const std::string& text, const std::string& text_2, int64_t clip_skip,
                    bool* cut) {
    bool cut_2 = false;
    auto ids = [&](const text::ClipTokenizer& tokenizer, const std::string& t, bool* c) {
      return at::tensor(tokenizer.encode_padded(t, c), at::kLong).unsqueeze(0).to(load_.device);
    };
    const at::Tensor ids_1 = ids(tokenizer_, text, cut);
    const at::Tensor ids_2 = ids(*tokenizer_2_, text_2, cut ? &cut_2 : nullptr);
    if (cut) *cut = *cut || cut_2;
    auto c =
        models::sdxl_text_conditioning(text_encoder_, text_encoder_2_, ids_1, ids_2, clip_skip);
    return PromptEmbeddings{c.context.repeat({o.num_images, 1, 1}),
                            c.pooled.repeat({o.num_images, 1})};
  };
  if (truncated) *truncated = false;
  PromptEmbeddings positive =
      encode(o.prompt, o.prompt_2.empty() ? o.prompt : o.prompt_2, o.clip_skip, truncated);
  if (o.guidance_scale <= 1.0) return positive;
  // No negative prompt: zeros where the model asks for them (force_zeros_for_empty_prompt, as
  // SDXL base does), otherwise the encoded empty prompt; never with clip skip.
  PromptEmbeddings negative =
      o.negative_prompt.empty() && force_zeros_for_empty_prompt_
          ? PromptEmbeddings{at::zeros_like(positive.context), at::zeros_like(positive.pooled)}
          : encode(o.negative_prompt,
                   o.negative_prompt_2.empty() ? o.negative_prompt : o.negative_prompt_2, 0,
                   nullptr);
  return {at::cat({negative.context, positive.context}),
          at::cat({negative.pooled, positive.pooled})};
}

at::Tensor StableDiffusionPipeline::time_ids(const GenerateOptions& o, int64_t height,
                                             int64_t width) const {
  auto pair = [](const std::vector<int64_t>& v, const char* name, int64_t h, int64_t w) {
    if (v.empty()) return std::vector<int64_t>{h, w};
    if (v.size() != 2)
      throw Error(std::string(name) + " takes two numbers (height, width), got " +
                  std::to_string(v.size()));
    return v;
  };
  // (original h, w, crop top, left, target h, w) in the pipeline's dtype, as diffusers makes it.
  auto row = [&](const std::vector<int64_t>& original, const std::vector<int64_t>& crop,
                 const std::vector<int64_t>& target, const char* prefix) {
    std::vector<int64_t> ids =
        pair(original, (std::string(prefix) + "original size").c_str(), height, width);
    for (const auto& part :
         {pair(crop, (std::string(prefix) + "crops coords top left").c_str(), 0, 0),
          pair(target, (std::string(prefix) + "target size").c_str(), height, width)})
      ids.insert(ids.end(), part.begin(), part.end());
    return at::tensor(ids, at::kLong).to(load_.dtype).unsqueeze(0).repeat({o.num_images, 1});
  };
  at::Tensor positive = row(o.original_size, o.crops_coords_top_left, o.target_size, "");
  if (o.guidance_scale <= 1.0) return positive.to(load_.device);
  const bool own_negative = !o.negative_original_size.empty() && !o.negative_target_size.empty();
  at::Tensor negative = own_negative
                            ? row(o.negative_original_size, o.negative_crops_coords_top_left,
                                  o.negative_target_size, "negative ")
                            : positive;
  // [negative × N; positive × N], the order the context is stacked in. (diffusers repeats the
  // two rows as a pair, which pairs them wrongly for N > 1 when the negative ids differ.)
  return at::cat({negative, positive}).to(load_.device);
}

void StableDiffusionPipeline::use_channels_last() {
  models::to_channels_last(*unet_);
  models::to_channels_last(*vae_);
}

void StableDiffusionPipeline::set_cuda_graphs(bool on) {
  if (!on) {
    cuda_graph_unet_.reset();
    return;
  }
  if (!load_.device.is_cuda())
    throw Error("CUDA graphs need the pipeline on a CUDA device (--device cuda)");
  if (!cuda_graphs_available())
    throw Error("this sdtune was built without CUDA (its torch has none): no CUDA graphs");
  if (!cuda_graph_unet_) cuda_graph_unet_ = std::make_unique<CudaGraphUNet>(unet_);
}

at::Tensor StableDiffusionPipeline::generate(const GenerateOptions& o,
                                             const StepCallback& on_step) {
  return generate(o, encode_prompt(o), on_step);
}

at::Tensor StableDiffusionPipeline::generate(const GenerateOptions& o,
                                             const PromptEmbeddings& prompt_embeddings,
                                             const StepCallback& on_step,
                                             const LatentCallback& on_latents) {
  c10::InferenceMode inference;
  const int64_t f = vae_scale_factor();
  if (o.steps < 1) throw Error("steps must be at least 1, got " + std::to_string(o.steps));
  if (o.num_images < 1)
    throw Error("num-images must be at least 1, got " + std::to_string(o.num_images));
  if (o.init_image && (o.strength <= 0.0 || o.strength > 1.0))
    throw Error("strength must be in (0, 1], got " + std::to_string(o.strength));
  int64_t width = o.width > 0 ? o.width : unet_->config.sample_size * f;
  int64_t height = o.height > 0 ? o.height : unet_->config.sample_size * f;
  if (o.init_image) {  // img2img takes the image's size, rounded down to the VAE's factor
    height = o.init_image->size(0) - o.init_image->size(0) % f;
    width = o.init_image->size(1) - o.init_image->size(1) % f;
  }
  if (width % 8 != 0 || height % 8 != 0)
    throw Error("width and height must be multiples of 8, got " + std::to_string(width) + "x" +
                std::to_string(height));

  const at::Tensor& embeddings = prompt_embeddings.context;
  std::optional<models::AddedConditions> added;
  if (is_xl())
    added = models::AddedConditions{prompt_embeddings.pooled, time_ids(o, height, width)};
  const bool guidance = o.guidance_scale > 1.0;
  // One CPU generator makes every draw, in diffusers' order, so a seed means the same image there.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const auto cpu = at::TensorOptions().dtype(load_.dtype);
  auto& sched = *scheduler_;
  sched.set_eta(o.eta);
  sched.set_timesteps(o.steps);
  at::Tensor timesteps = sched.timesteps();

  at::Tensor latents;
  if (!o.init_image) {
    latents =
        at::randn({o.num_images, unet_->config.in_channels, height / f, width / f}, generator, cpu)
            .to(load_.device);
    latents = latents * sched.init_noise_sigma();
  } else {
    // StableDiffusionImg2ImgPipeline: skip the first (1 − strength) of the schedule, encode the
    // image (one posterior draw), then noise it to the first remaining timestep.
    const int64_t init_steps = std::min(static_cast<int64_t>(o.steps * o.strength), o.steps);
    const int64_t t_start = std::max<int64_t>(o.steps - init_steps, 0) * sched.order();
    timesteps = timesteps.slice(0, t_start);
    sched.set_begin_index(t_start);
    if (timesteps.numel() == 0)
      throw Error("strength " + std::to_string(o.strength) + " leaves no denoising step");
    const at::Tensor image =
        io::pixels_to_tensor(o.init_image->slice(0, 0, height).slice(1, 0, width)).unsqueeze(0);
    at::Tensor init = vae_->encode(image.to(load_.device, vae_dtype_)).sample(generator);
    init = (init * vae_->config.scaling_factor).to(load_.dtype).repeat({o.num_images, 1, 1, 1});
    at::Tensor noise = at::randn(init.sizes(), generator, cpu).to(load_.device);
    latents = sched.add_noise(init, noise, timesteps.slice(0, 0, 1).repeat({o.num_images}));
  }

  const int64_t n = timesteps.numel();
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor t = timesteps[i];
    at::Tensor input = guidance ? at::cat({latents, latents}) : latents;
    input = sched.scale_model_input(input, t);
    at::Tensor noise_pred =
        cuda_graph_unet_
            ? cuda_graph_unet_->forward(input, t, embeddings, added ? &*added : nullptr)
            : unet_->forward(input, t, embeddings, added ? &*added : nullptr);
    if (guidance) {
      // Classifier-free guidance: ε = ε_uncond + s · (ε_text − ε_uncond).
      auto parts = noise_pred.chunk(2);
      noise_pred = parts[0] + o.guidance_scale * (parts[1] - parts[0]);
    }
    latents = sched.step(noise_pred, t, latents, generator);
    if (on_step) on_step(i, n);
    if (on_latents) on_latents(latents);
  }

  return io::tensor_to_pixels(vae_->decode((latents / vae_->config.scaling_factor).to(vae_dtype_)));
}

}  // namespace sdtune::pipeline
