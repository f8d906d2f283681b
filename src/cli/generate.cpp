// sdtune generate: text-to-image (and img2img with --init-image) from a pipeline folder, writing
// PNGs that carry their generation parameters in A1111's "parameters" text chunk.
#include <cstdio>
#include <random>
#include <string>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "cli/number_checks.h"
#include "cli/progress.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/lora/lora.h"

namespace sdtune::cli {
namespace {

struct Args {
  GenerationFlags flags;
  std::string model, out, init_image;
  std::optional<uint64_t> seed;
};

// FILE.png for one image; FILE-0.png, FILE-1.png, ... for several.
std::vector<std::filesystem::path> output_paths(const std::filesystem::path& out, int64_t n) {
  if (n == 1) return {out};
  std::vector<std::filesystem::path> paths;
  for (int64_t i = 0; i < n; ++i)
    paths.push_back(out.parent_path() /
                    (out.stem().string() + "-" + std::to_string(i) + out.extension().string()));
  return paths;
}

void run(Args& a) {
  auto& g = a.flags.gen;
  const models::LoadOptions load = checked_load_options(a.flags);
  g.seed = a.seed ? *a.seed : std::random_device{}();
  auto paths = output_paths(a.out, g.num_images);
  for (const auto& p : paths)  // checked before any work: existing files are never overwritten
    if (std::filesystem::exists(p))
      throw Error("output file exists; refusing to overwrite it", p.string());
  if (!a.init_image.empty()) g.init_image = io::read_image_rgb(a.init_image);

  Progress progress("generate", a.flags.quiet);
  auto folder = models::open_model(a.model, a.flags.model_file);
  pipeline::StableDiffusionPipeline pipe(folder, load, a.flags.scheduler, a.flags.karras);
  lora::apply_lora_arguments(a.flags.loras, lora_targets(pipe));
  const double load_seconds = progress.elapsed();

  bool truncated = false;
  const pipeline::PromptEmbeddings embeddings = pipe.encode_prompt(g, &truncated);
  if (truncated)
    std::fprintf(stderr,
                 "sdtune: warning: the prompt is longer than 77 CLIP tokens; the rest was cut off, "
                 "as diffusers does\n");
  // Step timing: from the end of the first denoising step to the end of the last, so that the
  // per-step figure leaves out prompt encoding, VAE decoding and first-call warm-up.
  int64_t steps_run = 0;
  double first_step_end = 0, last_step_end = 0;
  at::Tensor images = pipe.generate(g, embeddings, [&](int64_t i, int64_t n) {
    steps_run = n;
    last_step_end = progress.elapsed();
    if (i == 0) first_step_end = last_step_end;
    progress.update(i + 1, n);
  });
  progress.finish();
  const double per_step = steps_run > 1 ? (last_step_end - first_step_end) / (steps_run - 1)
                                        : last_step_end - load_seconds;

  const int64_t height = images.size(1), width = images.size(2);
  const std::string model_name =
      std::filesystem::path(a.model).lexically_normal().filename().string();
  for (int64_t i = 0; i < images.size(0); ++i) {
    pipeline::GenerationSettings settings =
        generation_settings(a.flags, pipe, width, height, model_name);
    if (g.init_image) settings.denoising_strength = g.strength;
    settings.batch_size = g.num_images;
    settings.batch_pos = i;
    io::write_png(
        paths[i], images[i],
        {{"parameters", pipeline::parameters_text(g.prompt, g.negative_prompt, settings)}});
  }
  if (!a.flags.quiet) {
    std::fprintf(
        stderr,
        "sdtune: %lld image(s) %lldx%lld, %lld steps (%.3f s/step), loading %.2f s, total %.2f s\n",
        static_cast<long long>(images.size(0)), static_cast<long long>(width),
        static_cast<long long>(height), static_cast<long long>(steps_run), per_step, load_seconds,
        progress.elapsed());
    for (const auto& p : paths) std::printf("%s\n", p.string().c_str());
  }
}

}  // namespace

void add_generate(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "generate", "Generate images from a prompt (text-to-image, or img2img with --init-image)");
  cmd->add_option(
         "--model", a->model,
         "Pipeline folder (diffusers layout) or single-file checkpoint (.safetensors, .ckpt)")
      ->required();
  cmd->add_option("--prompt", a->flags.gen.prompt, "Text prompt")->required();
  add_generation_options(cmd, a->flags);
  cmd->add_option("--seed", a->seed, "Random seed (default: a random one, written into the PNG)");
  cmd->add_option("--num-images", a->flags.gen.num_images, "Images for the prompt")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--init-image", a->init_image, "img2img: start from this image");
  cmd->add_option("--strength", a->flags.gen.strength,
                  "img2img: how much of the image is re-noised, in (0, 1]")
      ->capture_default_str()
      ->check(checks::positive())
      ->check(checks::at_most(1));
  cmd->add_option("--out", a->out, "Output PNG (with --num-images N: OUT-0.png ... OUT-{N-1}.png)")
      ->required();
  cmd->callback([a] { run(*a); });
}

}  // namespace sdtune::cli
