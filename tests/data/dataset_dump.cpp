// Test driver: reads a dataset (image folder or parquet, through data::open_dataset) as
// `sdtune train` will and writes what training would see, so that tests/data/test_*.py can check
// it against PIL/torchvision.
//
//   sdtune_dataset_dump --data DIR|FILE.parquet --resolution R [--center-crop] [--random-flip]
//       [--seed S] [--image-column C] [--caption-column C] [--repeat K] --out out.safetensors
//
// Outputs: "image.N" (float [3,R,R] in [-1, 1]) for the N-th usable example (with --repeat K,
// each example is drawn K times: "image.N" then holds [K,3,R,R]), "placement.N" (int64 [6] or
// [K,6]: where each draw's crop came from, data::CropPlacement as SDXL's time ids order it:
// source height, width, crop top, left, crop height, width), and __metadata__ entries
// "caption.N", "file.N", "count" and "skipped" (a JSON list of {"path", "reason"}). No usable
// image at all is an error.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "driver.h"
#include "sdtune/data/caption_dataset.h"
#include "sdtune/data/image_loader.h"
#include "sdtune/error.h"
#include "sdtune/io/tensor.h"

namespace {

using sdtune::Error;
namespace data = sdtune::data;

struct Args {
  std::string data, out;
  int64_t resolution = 0;
  bool center_crop = false, random_flip = false;
  uint64_t seed = 0;
  std::string image_column = "image", caption_column = "text";
  int64_t repeat = 1;
  bool allow_outside_data = false;
  int64_t max_image_pixels = sdtune::io::kMaxImagePixels;
};

void run(const Args& a) {
  data::TransformOptions options;
  options.resolution = a.resolution;
  options.center_crop = a.center_crop;
  options.random_flip = a.random_flip;
  options.max_image_pixels = a.max_image_pixels;
  const std::string& dir = a.data;
  const int64_t repeat = a.repeat;

  auto dataset = data::open_dataset(
      dir, a.image_column, a.caption_column,
      a.allow_outside_data ? data::Confinement::Anywhere : data::Confinement::DatasetFolder);
  std::vector<data::Skipped> skipped = dataset.skipped();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(a.seed);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
  int64_t n = 0;
  for (const auto& example : dataset.examples()) {
    std::vector<at::Tensor> draws, placements;
    for (int64_t k = 0; k < repeat; ++k) {
      data::CropPlacement p;
      auto image = data::load_training_image(example, options, gen, skipped, &p);
      if (!image) break;
      draws.push_back(*image);
      placements.push_back(
          at::tensor({p.source.height, p.source.width, p.top, p.left, p.crop.height, p.crop.width},
                     at::kLong));
    }
    if (draws.empty()) continue;
    const std::string id = std::to_string(n++);
    tensors.emplace_back("image." + id, repeat == 1 ? draws[0] : at::stack(draws));
    tensors.emplace_back("placement." + id, repeat == 1 ? placements[0] : at::stack(placements));
    metadata["caption." + id] = example.caption;
    metadata["file." + id] = example.image.string();
  }
  if (n == 0) throw Error("no usable image (" + std::to_string(skipped.size()) + " skipped)", dir);
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : skipped)
    list.push_back(
        {{"path", s.path.string()}, {"reason", s.reason}, {"outside", s.outside_dataset}});
  metadata["skipped"] = list.dump();
  metadata["count"] = std::to_string(n);
  sdtune::io::write_tensors(a.out, tensors, metadata);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  return sdtune::driver::run_driver(
      argc, argv, "Reads a dataset as training will and writes what training would see",
      [&](CLI::App& app) {
        app.add_option("--data", a.data, "Image folder or parquet file")->required();
        app.add_option("--resolution", a.resolution, "Side of the square images")->required();
        app.add_flag("--center-crop", a.center_crop, "Center crop (else a random crop)");
        app.add_flag("--random-flip", a.random_flip, "Horizontal flip with p = 0.5");
        app.add_option("--seed", a.seed, "Seed of the crops and flips")->capture_default_str();
        app.add_option("--image-column", a.image_column, "Parquet: the image column")
            ->capture_default_str();
        app.add_option("--caption-column", a.caption_column, "The caption column")
            ->capture_default_str();
        app.add_option("--repeat", a.repeat, "Draws of each example")->capture_default_str();
        app.add_flag("--allow-outside-data", a.allow_outside_data, "Read entries outside DIR");
        app.add_option("--max-image-pixels", a.max_image_pixels, "Larger images are skipped");
        app.add_option("--out", a.out, "Output tensors (.safetensors)")->required();
      },
      [&] { run(a); });
}
