#include "cli/generation_options.h"

#include <cstdio>
#include <tuple>

#include "cli/number_checks.h"
#include "sdtune/error.h"
#include "sdtune/models/attention_backend.h"

namespace sdtune::cli {

void add_generation_options(CLI::App* cmd, GenerationFlags& f) {
  auto& g = f.gen;
  cmd->add_option("--negative-prompt", g.negative_prompt, "What to steer away from")
      ->capture_default_str();
  cmd->add_option("--prompt-2", g.prompt_2,
                  "SDXL: the second text encoder's prompt (default: the prompt)");
  cmd->add_option("--negative-prompt-2", g.negative_prompt_2,
                  "SDXL: the second text encoder's negative prompt (default: the negative prompt)");
  // SDXL's micro-conditioning, as StableDiffusionXLPipeline's arguments of the same names.
  for (auto [name, value, help] :
       {std::tuple{"--original-size", &g.original_size,
                   "SDXL: HEIGHT WIDTH the image is conditioned as coming from (default: the "
                   "output size)"},
        {"--crops-coords-top-left", &g.crops_coords_top_left,
         "SDXL: TOP LEFT of the crop it is conditioned as (default: 0 0)"},
        {"--target-size", &g.target_size,
         "SDXL: HEIGHT WIDTH asked for (default: the output size)"},
        {"--negative-original-size", &g.negative_original_size,
         "SDXL: HEIGHT WIDTH for the unconditional half (with --negative-target-size)"},
        {"--negative-crops-coords-top-left", &g.negative_crops_coords_top_left,
         "SDXL: TOP LEFT for the unconditional half"},
        {"--negative-target-size", &g.negative_target_size,
         "SDXL: HEIGHT WIDTH for the unconditional half (with --negative-original-size)"}})
    cmd->add_option(name, *value, help)->expected(2)->check(checks::non_negative());
  cmd->add_option("--steps", g.steps, "Denoising steps")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--guidance-scale", g.guidance_scale,
                  "Classifier-free guidance scale (<= 1 turns it off)")
      ->capture_default_str();
  cmd->add_option("--scheduler", f.scheduler,
                  "pndm|ddim|ddpm|euler|euler-ancestral|dpmpp-2m (default: the model's own)");
  cmd->add_flag("--karras", f.karras, "Karras sigmas (euler, euler-ancestral, dpmpp-2m)");
  cmd->add_option("--lora", f.loras,
                  "LoRA file (diffusers or kohya format) merged into the model, FILE[:SCALE]; "
                  "repeatable")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--eta", g.eta, "DDIM eta (0 = deterministic)")
      ->capture_default_str()
      ->check(checks::in_range(0, 1));
  cmd->add_option("--width", g.width,
                  "Image width, a multiple of 8 (default: the model's native size)")
      ->check(checks::at_least(8));
  cmd->add_option("--height", g.height,
                  "Image height, a multiple of 8 (default: the model's native size)")
      ->check(checks::at_least(8));
  cmd->add_option("--clip-skip", g.clip_skip,
                  "Use the text encoder's output this many layers before the last")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--device", f.device, "cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", f.dtype, "fp32, fp16 (GPU only) or bf16")->capture_default_str();
  cmd->add_flag("--quiet", f.quiet, "No progress bar or timing summary");
  cmd->add_flag("--cuda-graph", f.cuda_graph,
                "Replay the denoising loop's UNet from CUDA graphs (--device cuda; one capture per "
                "size and batch)");
  cmd->add_flag("--channels-last", f.channels_last,
                "Run the UNet's and VAE's convolutions channels-last (NHWC)");
  cmd->add_option("--attention-backend", f.attention_backend,
                  "Attention kernel tried first on a GPU: auto (PyTorch's order), flash, cudnn, "
                  "efficient or math")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "flash", "cudnn", "efficient", "math"}));
  add_single_file_options(cmd, f.model_file);
}

void apply_speed_options(pipeline::StableDiffusionPipeline& pipe, const GenerationFlags& f) {
  if (f.channels_last) pipe.use_channels_last();
  models::prefer_attention_backend(f.attention_backend, c10::Device(f.device));
  pipe.set_cuda_graphs(f.cuda_graph);
}

void add_single_file_options(CLI::App* cmd, models::SingleFileOptions& o,
                             bool with_prediction_type) {
  if (with_prediction_type)
    cmd->add_option("--prediction-type", o.prediction_type,
                    "For a single-file --model: epsilon or v_prediction (default: SD 1.x epsilon, "
                    "SD 2.x v_prediction as the 768-v models)")
        ->check(CLI::IsMember({"epsilon", "v_prediction"}));
  cmd->add_flag(
      "--ema-weights", o.ema_weights,
      "For a single-file --model with EMA weights (model_ema.*): take the UNet from them");
}

std::map<std::string, torch::nn::Module*> lora_targets(pipeline::StableDiffusionPipeline& pipe) {
  std::map<std::string, torch::nn::Module*> targets{
      {"unet", pipe.unet().ptr().get()}, {"text_encoder", pipe.text_encoder().ptr().get()}};
  if (pipe.is_xl()) targets["text_encoder_2"] = pipe.text_encoder_2().ptr().get();
  return targets;
}

models::LoadOptions checked_load_options(const GenerationFlags& f) {
  if (f.gen.width % 8 != 0 || f.gen.height % 8 != 0)
    throw Error("--width and --height must be multiples of 8, got " + std::to_string(f.gen.width) +
                "x" + std::to_string(f.gen.height));
  models::LoadOptions load;
  load.device = c10::Device(f.device);
  load.dtype = models::parse_dtype(f.dtype);
  if (load.device.is_cpu() && load.dtype == c10::kHalf)
    throw Error("fp16 runs on the GPU only; use --dtype fp32 or bf16 on the CPU");
  if (f.cuda_graph && !load.device.is_cuda()) throw Error("--cuda-graph needs --device cuda");
  return load;
}

pipeline::GenerationSettings generation_settings(const GenerationFlags& f,
                                                 const pipeline::StableDiffusionPipeline& pipe,
                                                 int64_t width, int64_t height,
                                                 const std::string& model) {
  return {.steps = f.gen.steps,
          .sampler = pipe.sampler_label(),
          .cfg_scale = f.gen.guidance_scale,
          .seed = f.gen.seed,
          .width = width,
          .height = height,
          .model = model,
          .clip_skip = f.gen.clip_skip};
}

}  // namespace sdtune::cli
