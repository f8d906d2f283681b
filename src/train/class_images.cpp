#include "sdtune/train/class_images.h"

#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"
#include "sdtune/io/image.h"
#include "sdtune/pipeline/generation_parameters.h"
#include "sdtune/pipeline/stable_diffusion_pipeline.h"

namespace sdtune::train {
namespace fs = std::filesystem;

ClassImageReport ensure_class_images(const io::ModelFolder& base, const models::LoadOptions& load,
                                     const fs::path& dir, const ClassImageOptions& options,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  if (options.prompt.empty()) throw Error("class images need a class prompt (--class-prompt)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create class image folder: " + ec.message(), dir.string());
  ClassImageReport report;
  const data::DatasetRoot root(dir, options.confinement);
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file() && data::is_image_file(entry.path()) &&
        root.refusal(entry.path()).empty())
      ++report.found;
  const int64_t missing = options.count - report.found;
  if (missing <= 0) return report;
  if (options.sync) options.sync();  // every rank has counted what was there before

  // The missing images' numbers, in order: image i is drawn with seed + i whoever draws it.
  const auto stem = [](int64_t i) {
    char s[32];
    std::snprintf(s, sizeof s, "class-%05lld", static_cast<long long>(i));
    return std::string(s);
  };
  std::vector<int64_t> todo;
  for (int64_t i = 0; static_cast<int64_t>(todo.size()) < missing; ++i)
    if (!fs::exists(dir / (stem(i) + ".png"))) todo.push_back(i);

  std::optional<pipeline::StableDiffusionPipeline> pipe;
  const int64_t mine = (missing - options.rank + options.world - 1) / options.world;
  int64_t done = 0;
  for (size_t k = options.rank; k < todo.size(); k += options.world) {
    if (!pipe) pipe.emplace(base, load);
    const int64_t i = todo[k];
    const fs::path image = dir / (stem(i) + ".png");
    pipeline::GenerateOptions g;
    g.prompt = options.prompt;
    g.steps = options.steps;
    g.guidance_scale = options.guidance_scale;
    g.width = g.height = options.resolution;
    g.seed = options.seed + static_cast<uint64_t>(i);
    const at::Tensor rgb = pipe->generate(g)[0];
    // The caption first: an image without its .txt would train with an empty caption if the
    // folder were used as a plain dataset.
    io::write_file_atomically(dir / (stem(i) + ".txt"), [&](const fs::path& tmp) {
      std::ofstream out(tmp);
      out << options.prompt << "\n";
      if (!out) throw Error("cannot write", tmp.string());
    });
    io::write_png(image, rgb,
                  {{"parameters", pipeline::parameters_text(options.prompt, "",
                                                            {.steps = g.steps, .seed = g.seed})}});
    if (progress) progress(++done, mine);
  }
  if (options.sync) options.sync();  // every share written before anyone reads the folder
  report.generated = missing;
  return report;
}

}  // namespace sdtune::train
