#include "sdtune/train/validation.h"

#include <cstdio>

#include "sdtune/io/image.h"
#include "sdtune/models/autocast.h"
#include "sdtune/pipeline/generation_parameters.h"
#include "sdtune/pipeline/stable_diffusion_pipeline.h"

namespace sdtune::train {
namespace fs = std::filesystem;
at::Tensor run_validation(const io::ModelFolder& base, const models::LoadOptions& load,
                          models::CLIPTextModel text_encoder, models::CLIPTextModel text_encoder_2,
                          models::UNet2DConditionModel unet, models::AutoencoderKL vae,
                          const Validation& v, std::optional<at::ScalarType> amp,
                          const fs::path& dir, int64_t step) {
  pipeline::StableDiffusionPipeline pipe(base, load, text_encoder, unet, vae, text_encoder_2);
  models::AutocastGuard autocast(load.device.type(), amp);
  std::vector<at::Tensor> cells;
  std::vector<std::string> row_labels, col_labels;
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  const fs::path step_dir = dir / name;
  fs::create_directories(step_dir);
  for (size_t p = 0; p < v.prompts.size(); ++p) {
    pipeline::GenerateOptions g;
    g.prompt = v.prompts[p];
    g.steps = v.steps;
    g.guidance_scale = v.guidance;
    g.num_images = v.images_per_prompt;
    g.seed = v.seed;
    const at::Tensor images = pipe.generate(g);
    row_labels.push_back(v.prompts[p]);
    for (int64_t i = 0; i < images.size(0); ++i) {
      cells.push_back(images[i]);
      const fs::path file =
          step_dir / ("prompt" + std::to_string(p) + "-" + std::to_string(i) + ".png");
      std::error_code ec;
      fs::remove(file, ec);  // a resumed run regenerates the same step
      const pipeline::GenerationSettings settings{
          .steps = g.steps,
          .cfg_scale = g.guidance_scale,
          .seed = g.seed,
          .extra = {{"Training step", std::to_string(step)}}};
      io::write_png(file, images[i],
                    {{"parameters", pipeline::parameters_text(g.prompt, "", settings)}});
    }
  }
  for (int64_t i = 0; i < v.images_per_prompt; ++i)
    col_labels.push_back("seed " + std::to_string(v.seed) + " #" + std::to_string(i));
  at::Tensor grid = io::labelled_grid(cells, static_cast<int64_t>(v.prompts.size()),
                                      v.images_per_prompt, row_labels, col_labels);
  std::error_code ec;
  fs::remove(step_dir / "grid.png", ec);
  io::write_png(step_dir / "grid.png", grid);
  return grid;
}

}  // namespace sdtune::train
