// sdtune generate: text-to-image (and img2img with --init-image) from a pipeline folder, writing
// PNGs that carry their generation parameters in A1111's "parameters" text chunk.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "cli/number_checks.h"
#include "cli/progress.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/lora/lora.h"
#include "sdtune/profile/profiler.h"

namespace sdtune::cli {
namespace {

struct Args {
  GenerationFlags flags;
  std::string model, out, init_image;
  std::optional<uint64_t> seed;
  int64_t benchmark = 0;  // timed end-to-end generations after one warm-up; 0: off
  std::string profile;    // a Chrome trace of one generation; empty: none
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

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// One generation end to end, as a user waits for it: prompt encoding, the denoising loop and the
// VAE decode, up to the uint8 images on the CPU (which waits for the device). Also the loop's
// steady-state seconds per step: from the end of its first step to the end of its last.
struct TimedGeneration {
  at::Tensor images;
  double seconds = 0, per_step = 0;
  int64_t steps = 0;
};

TimedGeneration timed_generation(pipeline::StableDiffusionPipeline& pipe,
                                 const pipeline::GenerateOptions& g, bool* truncated,
                                 const pipeline::StepCallback& on_step = {}) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto since = [&] { return std::chrono::duration<double>(clock::now() - start).count(); };
  TimedGeneration t;
  const pipeline::PromptEmbeddings embeddings = pipe.encode_prompt(g, truncated);
  double first_step_end = 0, last_step_end = 0;
  t.images = pipe.generate(g, embeddings, [&](int64_t i, int64_t n) {
    t.steps = n;
    last_step_end = since();
    if (i == 0) first_step_end = last_step_end;
    if (on_step) on_step(i, n);
  });
  t.seconds = since();
  t.per_step =
      t.steps > 1 ? (last_step_end - first_step_end) / static_cast<double>(t.steps - 1) : t.seconds;
  return t;
}

// --profile: one generation under PyTorch's profiler; its time by category goes to stderr.
profile::Breakdown profiled_generation(pipeline::StableDiffusionPipeline& pipe,
                                       const pipeline::GenerateOptions& g, bool cuda,
                                       const std::string& trace, at::Tensor* images) {
  profile::Profiler profiler(cuda);
  *images = timed_generation(pipe, g, nullptr).images;
  profile::Breakdown b = profiler.stop(trace);
  std::fprintf(stderr, "sdtune: profile of one generation (trace: %s)\n%s", trace.c_str(),
               b.table().c_str());
  return b;
}

// --benchmark N: one untimed warm-up generation (first-call kernel selection, allocator growth),
// then N timed ones with the same options (and with --profile one more, profiled); one JSON line
// on stdout.
at::Tensor benchmark(pipeline::StableDiffusionPipeline& pipe, const pipeline::GenerateOptions& g,
                     int64_t runs, double load_seconds, const std::string& profile, bool cuda) {
  timed_generation(pipe, g, nullptr);
  std::vector<double> seconds, per_step;
  TimedGeneration t;
  for (int64_t r = 0; r < runs; ++r) {
    t = timed_generation(pipe, g, nullptr);
    seconds.push_back(t.seconds);
    per_step.push_back(t.per_step);
  }
  nlohmann::json out = {{"end_to_end_seconds", seconds},
                        {"end_to_end_seconds_median", median(seconds)},
                        {"seconds_per_step", per_step},
                        {"seconds_per_step_median", median(per_step)},
                        {"steps", t.steps},
                        {"images", g.num_images},
                        {"load_seconds", load_seconds}};
  if (!profile.empty())
    out["profile"] = profiled_generation(pipe, g, cuda, profile, &t.images).to_json();
  std::printf("%s\n", out.dump().c_str());
  return t.images;
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
  apply_speed_options(pipe, a.flags);
  const double load_seconds = progress.elapsed();

  at::Tensor images;
  int64_t steps_run = 0;
  double per_step = 0;
  if (a.benchmark > 0) {
    images = benchmark(pipe, g, a.benchmark, load_seconds, a.profile, load.device.is_cuda());
  } else {
    bool truncated = false;
    std::optional<profile::Profiler> profiler;
    if (!a.profile.empty()) profiler.emplace(load.device.is_cuda());
    TimedGeneration t = timed_generation(pipe, g, &truncated,
                                         [&](int64_t i, int64_t n) { progress.update(i + 1, n); });
    progress.finish();
    if (profiler)
      std::fprintf(stderr, "sdtune: profile of the generation (trace: %s)\n%s", a.profile.c_str(),
                   profiler->stop(a.profile).table().c_str());
    if (truncated)
      std::fprintf(stderr,
                   "sdtune: warning: the prompt is longer than 77 CLIP tokens; the rest was cut "
                   "off, as diffusers does\n");
    images = t.images;
    steps_run = t.steps;
    per_step = t.per_step;
  }

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
  if (!a.flags.quiet && a.benchmark == 0) {
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
  cmd->add_option("--benchmark", a->benchmark,
                  "Time N end-to-end generations (prompt, loop, VAE decode) after one warm-up; "
                  "prints JSON, writes the last run's images")
      ->check(checks::at_least(1));
  cmd->add_option("--profile", a->profile,
                  "Run a generation under PyTorch's profiler: Chrome trace to this file, time by "
                  "category (matmul, convolution, attention, ...) to stderr");
  cmd->add_option("--out", a->out, "Output PNG (with --num-images N: OUT-0.png ... OUT-{N-1}.png)")
      ->required();
  cmd->callback([a] { run(*a); });
}

}  // namespace sdtune::cli
