#include "sdtune/data/image_loader.h"

#include "sdtune/error.h"
#include "sdtune/io/image.h"

namespace sdtune::data {

std::optional<at::Tensor> load_training_image(const Example& example,
                                              const TransformOptions& options, at::Generator& gen,
                                              std::vector<Skipped>& skipped) {
  at::Tensor rgb;
  try {
    rgb = example.bytes ? io::read_image_rgb(example.bytes->data(), example.bytes->size(),
                                             example.image.string())
                        : io::read_image_rgb(example.image);
  } catch (const Error& e) {
    skip(skipped, example.image, e.message());
    return std::nullopt;
  }
  return transform_image(rgb, options, gen);
}

}  // namespace sdtune::data
