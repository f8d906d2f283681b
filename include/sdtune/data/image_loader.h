#pragma once
// Reading one training image, where a bad file costs that example and not the run.
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/data/image_transforms.h"

namespace sdtune::data {

// The example's image as transform_image makes it (float [3,R,R] in [-1, 1]), or nullopt when the
// file is corrupt, truncated, unreadable or over options.max_image_pixels: then a one-line warning
// naming it goes to stderr and it is added to `skipped`. Images smaller than the resolution are
// upscaled. `placement` (optional) receives where its crop came from.
std::optional<at::Tensor> load_training_image(const Example& example,
                                              const TransformOptions& options, at::Generator& gen,
                                              std::vector<Skipped>& skipped,
                                              CropPlacement* placement = nullptr);

// Where the example's image file is: its file, or its parquet row's bytes.
io::ImageSource image_source(const Example& example);

// The example's image decoded at the size the transforms resize it to (resized_size), read
// through libvips so that memory follows that size and not the file's; an Error naming it when
// unreadable or over options.max_image_pixels (see io::read_image_fitted).
io::FittedImage read_training_image(const Example& example, const TransformOptions& options);

// The usable examples among `candidates` and their sizes: each image is decoded once up front
// (streamed, none kept: io::check_image), so that a corrupt or truncated file is reported (and
// left out, in `skipped`) before training starts rather than in the middle of a batch.
void usable_examples(const std::vector<Example>& candidates, std::vector<Example>& usable,
                     std::vector<BucketResolution>& sizes, std::vector<Skipped>& skipped,
                     int64_t max_pixels);

}  // namespace sdtune::data
