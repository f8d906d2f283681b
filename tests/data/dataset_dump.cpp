// Test driver: reads a dataset (image folder or parquet, through data::open_dataset) as
// `sdtune train` will and writes what training would see, so that tests/data/test_*.py can check
// it against PIL/torchvision.
//
//   sdtune_dataset_dump --data DIR|FILE.parquet --resolution R [--center-crop] [--random-flip]
//       [--seed S] [--image-column C] [--caption-column C] [--repeat K] --out out.safetensors
//
// Outputs: "image.N" (float [3,R,R] in [-1, 1]) for the N-th usable example (with --repeat K,
// each example is drawn K times: "image.N" then holds [K,3,R,R]), and __metadata__ entries
// "caption.N", "file.N", "count" and "skipped" (a JSON list of {"path", "reason"}). No usable
// image at all is an error.
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/data/image_loader.h"
#include "sdtune/error.h"
#include "sdtune/io/tensor.h"

namespace {

using sdtune::Error;
namespace data = sdtune::data;

int run(int argc, char** argv) {
  std::map<std::string, std::string> args;
  bool center_crop = false, random_flip = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--center-crop") {
      center_crop = true;
    } else if (flag == "--random-flip") {
      random_flip = true;
    } else {
      if (i + 1 >= argc) throw Error("missing value for " + flag);
      args[flag] = argv[++i];
    }
  }
  auto take = [&](const std::string& key, const std::string& fallback = "") {
    auto it = args.find(key);
    if (it == args.end()) {
      if (fallback.empty()) throw Error("missing " + key);
      return fallback;
    }
    std::string value = it->second;
    args.erase(it);
    return value;
  };
  const std::string dir = take("--data"), out_path = take("--out");
  data::TransformOptions options;
  options.resolution = std::stoll(take("--resolution"));
  options.center_crop = center_crop;
  options.random_flip = random_flip;
  const uint64_t seed = std::stoull(take("--seed", "0"));
  const std::string image_column = take("--image-column", "image");
  const std::string caption_column = take("--caption-column", "text");
  const int64_t repeat = std::stoll(take("--repeat", "1"));
  if (!args.empty()) throw Error("unknown option " + args.begin()->first);

  auto dataset = data::open_dataset(dir, image_column, caption_column);
  std::vector<data::Skipped> skipped = dataset.skipped();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
  int64_t n = 0;
  for (const auto& example : dataset.examples()) {
    std::vector<at::Tensor> draws;
    for (int64_t k = 0; k < repeat; ++k) {
      auto image = data::load_training_image(example, options, gen, skipped);
      if (!image) break;
      draws.push_back(*image);
    }
    if (draws.empty()) continue;
    const std::string id = std::to_string(n++);
    tensors.emplace_back("image." + id, repeat == 1 ? draws[0] : at::stack(draws));
    metadata["caption." + id] = example.caption;
    metadata["file." + id] = example.image.string();
  }
  if (n == 0) throw Error("no usable image (" + std::to_string(skipped.size()) + " skipped)", dir);
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : skipped) list.push_back({{"path", s.path.string()}, {"reason", s.reason}});
  metadata["skipped"] = list.dump();
  metadata["count"] = std::to_string(n);
  sdtune::io::write_tensors(out_path, tensors, metadata);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "sdtune_dataset_dump: error: " << e.what() << "\n";
    return 1;
  }
}
