// sdtune grid: prompts × seeds × models in one labelled image, the side-by-side comparison users
// make when they engineer prompts or judge a fine-tune against its base model.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "cli/progress.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/lora/lora.h"

namespace sdtune::cli {
namespace {

struct Args {
  GenerationFlags flags;
  std::vector<std::string> models, prompts;
  std::vector<uint64_t> seeds{0};
  std::string out;
};

void run(Args& a) {
  const models::LoadOptions load = checked_load_options(a.flags);
  if (std::filesystem::exists(a.out))
    throw Error("output file exists; refusing to overwrite it", a.out);
  const int64_t rows = static_cast<int64_t>(a.models.size() * a.prompts.size());
  const int64_t cols = static_cast<int64_t>(a.seeds.size());
  std::vector<at::Tensor> cells;
  std::vector<std::string> row_labels, col_labels;
  for (uint64_t seed : a.seeds) col_labels.push_back("seed " + std::to_string(seed));

  Progress progress("grid", a.flags.quiet);
  std::string settings;
  for (const auto& model : a.models) {
    auto folder = models::open_model(model, a.flags.model_file);
    pipeline::StableDiffusionPipeline pipe(folder, load, a.flags.scheduler, a.flags.karras);
    // --lora applies to every model of the grid.
    lora::apply_lora_arguments(a.flags.loras, lora_targets(pipe));
    apply_speed_options(pipe, a.flags);
    const std::string name = std::filesystem::path(model).lexically_normal().filename().string();
    for (const auto& prompt : a.prompts) {
      row_labels.push_back(a.models.size() > 1 ? name + ": " + prompt : prompt);
      for (uint64_t seed : a.seeds) {
        pipeline::GenerateOptions g = a.flags.gen;
        g.prompt = prompt;
        g.seed = seed;
        at::Tensor image = pipe.generate(g)[0];
        if (!cells.empty() && !image.sizes().equals(cells[0].sizes()))
          throw Error("models produce different image sizes; set --width and --height", model);
        cells.push_back(image);
        progress.update(static_cast<int64_t>(cells.size()), rows * cols);
        if (settings.empty())
          settings = pipeline::settings_line(
              generation_settings(a.flags, pipe, image.size(1), image.size(0), name));
      }
    }
  }
  progress.finish();
  std::string params = "sdtune grid: rows = ";
  for (const auto& r : row_labels) params += "[" + r + "] ";
  params += "\nNegative prompt: " + a.flags.gen.negative_prompt + "\n" + settings;
  io::write_png(a.out, io::labelled_grid(cells, rows, cols, row_labels, col_labels),
                {{"parameters", params}});
  if (!a.flags.quiet) {
    std::fprintf(stderr, "sdtune: grid of %lld x %lld images in %.2f s\n",
                 static_cast<long long>(rows), static_cast<long long>(cols), progress.elapsed());
    std::printf("%s\n", a.out.c_str());
  }
}

}  // namespace

void add_grid(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd =
      app.add_subcommand("grid", "Prompts x seeds x models in one labelled comparison image");
  cmd->add_option("--model", a->models,
                  "Pipeline folder or single file; repeat to compare models (rows)")
      ->required();
  cmd->add_option("--prompt", a->prompts, "Prompt; repeat to compare prompts (rows)")->required();
  cmd->add_option("--seed", a->seeds, "Seed; repeat for more columns")->capture_default_str();
  add_generation_options(cmd, a->flags);
  cmd->add_option("--out", a->out, "Output PNG")->required();
  cmd->callback([a] { run(*a); });
}

}  // namespace sdtune::cli
