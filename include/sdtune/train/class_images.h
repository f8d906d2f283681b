#pragma once
// DreamBooth's class images: what the base model draws for the class prompt ("a photo of a dog"),
// generated once before training. Trained on next to the instance images (prior preservation),
// they keep the model from forgetting what the class looks like while it learns the instance.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "sdtune/data/dataset_root.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/models/component_loader.h"

namespace sdtune::train {

struct ClassImageOptions {
  std::string prompt;
  int64_t count = 100;  // images wanted in the folder
  int64_t steps = 50;   // denoising steps per image (the pipeline's default)
  double guidance_scale = 7.5;
  int64_t resolution = 512;
  uint64_t seed = 0;  // image i is drawn with seed + i, so a missing one is redrawn the same
  // Images whose real path leads outside the folder are not counted (training skips them) unless
  // they may be read (--allow-outside-data).
  data::Confinement confinement = data::Confinement::DatasetFolder;
  // Data-parallel runs: rank `rank` of `world` draws every world-th missing image. `sync` returns
  // when every rank has called it: once after all have counted the folder (before any writes),
  // once after all have written their share.
  int64_t rank = 0, world = 1;
  std::function<void()> sync;
};

struct ClassImageReport {
  int64_t found = 0, generated = 0;
};

// Makes sure `dir` holds at least `count` images: the ones already there (any image file, e.g. a
// user's own photos, that the confinement lets training read) are kept and counted; the missing
// ones are generated with the base model as class-NNNNN.png with the prompt beside them in
// class-NNNNN.txt (written whole or not at all, so that an interrupted run resumes where it
// stopped). `progress(done, total)` after each image.
ClassImageReport ensure_class_images(const io::ModelFolder& base, const models::LoadOptions& load,
                                     const std::filesystem::path& dir,
                                     const ClassImageOptions& options,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace sdtune::train
