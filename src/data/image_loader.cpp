#include "sdtune/data/image_loader.h"

#include "sdtune/error.h"
#include "sdtune/io/image.h"

namespace sdtune::data {

std::optional<at::Tensor> load_training_image(const Example& example,
                                              const TransformOptions& options, at::Generator& gen,
                                              std::vector<Skipped>& skipped,
                                              CropPlacement* placement) {
  io::FittedImage image;
  try {
    image = read_training_image(example, options);
  } catch (const Error& e) {
    skip(skipped, example.image, e.message());
    return std::nullopt;
  }
  return transform_image(image, options, gen, placement);
}

io::ImageSource image_source(const Example& example) {
  return example.bytes ? io::ImageSource::memory(example.bytes->data(), example.bytes->size(),
                                                 example.image.string())
                       : io::ImageSource::file(example.image);
}

io::FittedImage read_training_image(const Example& example, const TransformOptions& options) {
  return io::read_image_fitted(image_source(example), options.max_image_pixels,
                               [&](io::ImageSize source) { return resized_size(source, options); });
}

void usable_examples(const std::vector<Example>& candidates, std::vector<Example>& usable,
                     std::vector<BucketResolution>& sizes, std::vector<Skipped>& skipped,
                     int64_t max_pixels) {
  for (const auto& example : candidates) {
    try {
      const io::ImageSize size = io::check_image(image_source(example), max_pixels);
      sizes.push_back({size.width, size.height});
      usable.push_back(example);
    } catch (const Error& e) {
      skip(skipped, example.image, e.message());
    }
  }
}

}  // namespace sdtune::data
