#pragma once
// Training-image preprocessing as diffusers' train_text_to_image.py does it (Resize of the
// shorter side, center or random crop, random horizontal flip, [-1, 1] floats), and kohya's
// aspect-ratio buckets.
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/image.h"

namespace sdtune::data {

// Resizes uint8 [H,W,3] so that its shorter side is `size`; the longer side is truncated as
// torchvision's Resize(int) does. Small images are upscaled.
at::Tensor resize_shorter_side(const at::Tensor& rgb, int64_t size);

// The top-left corner of a centred crop: torchvision's CenterCrop (Python round, half to even).
int64_t center_crop_offset(int64_t length, int64_t crop);

struct BucketResolution {
  int64_t width = 0, height = 0;
  bool operator==(const BucketResolution&) const = default;
  auto operator<=>(const BucketResolution&) const = default;
};

// kohya's make_bucket_resolutions: the square bucket of side ⌊√area⌋ (in steps of `divisible`)
// plus, for each width from min_size to max_size in steps of `divisible`, the tallest height (a
// multiple of `divisible`, ≤ max_size) keeping width × height ≤ max_width × max_height, and its
// transpose, where that height is ≥ min_size. Sorted, without duplicates.
std::vector<BucketResolution> make_bucket_resolutions(int64_t max_width, int64_t max_height,
                                                      int64_t min_size = 256,
                                                      int64_t max_size = 1024,
                                                      int64_t divisible = 64);

// The bucket whose aspect ratio (w/h) is closest to the image's (the first on ties).
BucketResolution select_bucket(int64_t width, int64_t height,
                               const std::vector<BucketResolution>& buckets);

// uint8 [H,W,3] resized (aspect kept) to cover the bucket, then center-cropped to it.
at::Tensor resize_to_bucket(const at::Tensor& rgb, const BucketResolution& bucket);

// The index in `buckets` of select_bucket's choice.
int64_t bucket_index(int64_t width, int64_t height, const std::vector<BucketResolution>& buckets);

// How a training example's image becomes the model's input. This is the one place where that
// choice is made, for every path: uncached images, the latent cache and the VAE trainer.
struct TransformOptions {
  int64_t resolution = 512;
  bool center_crop = false;  // else a random crop
  bool random_flip = false;  // horizontal, p = 0.5
  // Aspect-ratio buckets (kohya): when given, each image is resized to cover its bucket and
  // center-cropped to it instead of the square crop.
  std::vector<BucketResolution> buckets;
  int64_t max_image_pixels = io::kMaxImagePixels;  // larger images are skipped, not decoded
};

// The size an image of `source` size is resized to before the crop: the shorter side made the
// resolution, or the cover of its bucket. The decoder resizes to it as it decodes
// (read_training_image), so that a huge photo never sits in memory whole.
io::ImageSize resized_size(io::ImageSize source, const TransformOptions& options);

// Where a training image's crop came from: what SDXL is conditioned on (its size/crop time ids).
// The source's size as displayed, the crop's size (the target size), and the crop's top-left
// corner in the resized image, mirrored with the image when it is flipped (kohya's convention:
// the corner the flipped crop has in the flipped image).
struct CropPlacement {
  io::ImageSize source, crop;
  int64_t top = 0, left = 0;
};

// The decoded image (already resized_size(), or still the source's size) -> float [3,R,R] in
// [-1, 1] (or the bucket's [3,h,w]; the bucket is chosen by the source's size). Random crops and
// flips are drawn from `gen` (a CPU generator), crop offsets first, as torchvision draws them.
// `placement`, when given, receives where the crop came from.
at::Tensor transform_image(const io::FittedImage& image, const TransformOptions& options,
                           at::Generator& gen, CropPlacement* placement = nullptr);

// The placement of a crop that draws nothing (a bucket's or the center crop: what the latent
// cache holds), flipped or not.
CropPlacement fixed_crop_placement(io::ImageSize source, const TransformOptions& options,
                                   bool flipped);

// The part of transform_image that draws nothing, unflipped: the bucket or the center crop. What
// the latent cache encodes; an Error for random crops, which no cache can hold.
at::Tensor transform_image_unflipped(const io::FittedImage& image, const TransformOptions& options);

// A whole decoded uint8 [H,W,3] image as transform_image takes it.
io::FittedImage whole_image(const at::Tensor& rgb);

// Whether this image is mirrored: one draw from `gen` (p = 0.5) when random flips are on, none
// otherwise. transform_image draws it after the crop; a cached latent draws it in its place.
bool draw_flip(const TransformOptions& options, at::Generator& gen);

// What transform_image draws from `gen` for an image of `source`'s size (as displayed), without
// the image: its crop's offsets and its flip. Returns the size (width, height) of the image it
// would give. A data-parallel rank keeps its stream in step this way on the examples of the
// other ranks' micro-batches, which it does not decode.
io::ImageSize draw_transform(io::ImageSize source, const TransformOptions& options,
                             at::Generator& gen);

}  // namespace sdtune::data
