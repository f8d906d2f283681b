#include "sdtune/data/image_loader.h"

#include "sdtune/error.h"
#include "sdtune/io/image.h"

namespace sdtune::data {

std::optional<at::Tensor> load_training_image(const Example& example,
                                              const TransformOptions& options, at::Generator& gen,
                                              std::vector<Skipped>& skipped) {
  at::Tensor rgb;
  try {
    rgb = read_example(example, options.max_image_pixels);
  } catch (const Error& e) {
    skip(skipped, example.image, e.message());
    return std::nullopt;
  }
  return transform_image(rgb, options, gen);
}

at::Tensor read_example(const Example& example, int64_t max_pixels) {
  return example.bytes ? io::read_image_rgb(example.bytes->data(), example.bytes->size(),
                                            example.image.string(), max_pixels)
                       : io::read_image_rgb(example.image, max_pixels);
}

void usable_examples(const std::vector<Example>& candidates, std::vector<Example>& usable,
                     std::vector<BucketResolution>& sizes, std::vector<Skipped>& skipped,
                     int64_t max_pixels) {
  for (const auto& example : candidates) {
    try {
      const at::Tensor rgb = read_example(example, max_pixels);
      sizes.push_back({rgb.size(1), rgb.size(0)});
      usable.push_back(example);
    } catch (const Error& e) {
      skip(skipped, example.image, e.message());
    }
  }
}

}  // namespace sdtune::data
