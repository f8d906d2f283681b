#include "sdtune/data/image_transforms.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/io/pixels.h"

namespace sdtune::data {

namespace {

// torchvision's Resize(int): the shorter side becomes `size`, the long side int(size * long /
// short), i.e. truncated.
io::ImageSize shorter_side_size(io::ImageSize s, int64_t size) {
  return s.height <= s.width ? io::ImageSize{size * s.width / s.height, size}
                             : io::ImageSize{size, size * s.height / s.width};
}

// The aspect-kept size that covers the bucket: scaled by height when the image is wider than it.
io::ImageSize bucket_cover_size(io::ImageSize s, const BucketResolution& bucket) {
  const double aspect = static_cast<double>(s.width) / static_cast<double>(s.height);
  const double bucket_aspect =
      static_cast<double>(bucket.width) / static_cast<double>(bucket.height);
  const double scale = aspect > bucket_aspect ? static_cast<double>(bucket.height) / s.height
                                              : static_cast<double>(bucket.width) / s.width;
  return {std::max(bucket.width, static_cast<int64_t>(s.width * scale + 0.5)),
          std::max(bucket.height, static_cast<int64_t>(s.height * scale + 0.5))};
}

// `rgb` at `size`, resized only if it is not already.
at::Tensor sized(const at::Tensor& rgb, io::ImageSize size) {
  return rgb.size(1) == size.width && rgb.size(0) == size.height
             ? rgb
             : io::resize_image(rgb, size.width, size.height);
}

// A bucket's center crop of an image already at its cover size.
at::Tensor bucket_crop(const at::Tensor& img, const BucketResolution& bucket) {
  const int64_t top = (img.size(0) - bucket.height) / 2, left = (img.size(1) - bucket.width) / 2;
  return img.slice(0, top, top + bucket.height).slice(1, left, left + bucket.width).contiguous();
}

}  // namespace

at::Tensor resize_shorter_side(const at::Tensor& rgb, int64_t size) {
  return sized(rgb, shorter_side_size({rgb.size(1), rgb.size(0)}, size));
}

int64_t center_crop_offset(int64_t length, int64_t crop) {
  // std::nearbyint rounds half to even in the default rounding mode, like Python's round().
  return static_cast<int64_t>(std::nearbyint(static_cast<double>(length - crop) / 2.0));
}

std::vector<BucketResolution> make_bucket_resolutions(int64_t max_width, int64_t max_height,
                                                      int64_t min_size, int64_t max_size,
                                                      int64_t divisible) {
  if (divisible <= 0 || min_size <= 0 || max_size < min_size)
    throw Error("bucket sizes: need 0 < min_size <= max_size and divisible > 0");
  const int64_t max_area = max_width * max_height;
  std::set<BucketResolution> resos;
  const int64_t square =
      static_cast<int64_t>(std::sqrt(static_cast<double>(max_area))) / divisible * divisible;
  resos.insert({square, square});
  for (int64_t width = min_size; width <= max_size; width += divisible) {
    const int64_t height = std::min(max_size, max_area / width / divisible * divisible);
    if (height >= min_size) {
      resos.insert({width, height});
      resos.insert({height, width});
    }
  }
  return {resos.begin(), resos.end()};
}

BucketResolution select_bucket(int64_t width, int64_t height,
                               const std::vector<BucketResolution>& buckets) {
  if (buckets.empty()) throw Error("no bucket resolutions");
  const double aspect = static_cast<double>(width) / static_cast<double>(height);
  const auto error = [aspect](const BucketResolution& b) {
    return std::abs(static_cast<double>(b.width) / static_cast<double>(b.height) - aspect);
  };
  return *std::min_element(buckets.begin(), buckets.end(),
                           [&](const auto& a, const auto& b) { return error(a) < error(b); });
}

at::Tensor resize_to_bucket(const at::Tensor& rgb, const BucketResolution& bucket) {
  return bucket_crop(sized(rgb, bucket_cover_size({rgb.size(1), rgb.size(0)}, bucket)), bucket);
}

int64_t bucket_index(int64_t width, int64_t height, const std::vector<BucketResolution>& buckets) {
  const BucketResolution b = select_bucket(width, height, buckets);
  return static_cast<int64_t>(std::find(buckets.begin(), buckets.end(), b) - buckets.begin());
}

io::ImageSize resized_size(io::ImageSize source, const TransformOptions& options) {
  if (!options.buckets.empty())
    return bucket_cover_size(
        source, options.buckets[bucket_index(source.width, source.height, options.buckets)]);
  if (options.resolution <= 0)
    throw Error("resolution must be positive, got " + std::to_string(options.resolution));
  return shorter_side_size(source, options.resolution);
}

io::FittedImage whole_image(const at::Tensor& rgb) {
  return {rgb, {rgb.size(1), rgb.size(0)}};
}

namespace {

// Where the crop lies in an image of `source`'s size once resized (resized_size): a bucket's
// center, the center, or, with `gen`, a random place (top drawn before left).
struct CropBox {
  int64_t top = 0, left = 0, height = 0, width = 0;
};

CropBox crop_box(io::ImageSize source, const TransformOptions& options, at::Generator* gen) {
  const io::ImageSize resized = resized_size(source, options);
  const int64_t h = resized.height, w = resized.width;
  if (!options.buckets.empty()) {
    const BucketResolution& b =
        options.buckets[bucket_index(source.width, source.height, options.buckets)];
    return {(h - b.height) / 2, (w - b.width) / 2, b.height, b.width};
  }
  const int64_t r = options.resolution;
  if (options.center_crop) return {center_crop_offset(h, r), center_crop_offset(w, r), r, r};
  if (!gen) throw Error("a random crop draws from a generator: it cannot be cached");
  const int64_t top = at::randint(0, h - r + 1, {1}, *gen, at::kLong).item<int64_t>();
  const int64_t left = at::randint(0, w - r + 1, {1}, *gen, at::kLong).item<int64_t>();
  return {top, left, r, r};
}

// The decoded image -> the crop (uint8), and where it lies.
at::Tensor crop(const io::FittedImage& image, const TransformOptions& options, at::Generator* gen,
                CropBox* box = nullptr) {
  const at::Tensor img = sized(image.rgb, resized_size(image.source, options));
  const CropBox c = crop_box(image.source, options, gen);
  if (box) *box = c;
  return img.slice(0, c.top, c.top + c.height).slice(1, c.left, c.left + c.width).contiguous();
}

CropPlacement placement_of(io::ImageSize source, const TransformOptions& options, const CropBox& c,
                           bool flipped) {
  // Mirrored, the crop's left edge is as far from the resized image's left edge as its right
  // edge was from the right one.
  const int64_t resized_width = resized_size(source, options).width;
  return {source, {c.width, c.height}, c.top, flipped ? resized_width - c.left - c.width : c.left};
}

}  // namespace

at::Tensor transform_image(const io::FittedImage& image, const TransformOptions& options,
                           at::Generator& gen, CropPlacement* placement) {
  CropBox box;
  at::Tensor img = crop(image, options, &gen, &box);
  const bool flipped = draw_flip(options, gen);
  if (flipped) img = img.flip({1});
  if (placement) *placement = placement_of(image.source, options, box, flipped);
  return io::pixels_to_tensor(img);
}

CropPlacement fixed_crop_placement(io::ImageSize source, const TransformOptions& options,
                                   bool flipped) {
  return placement_of(source, options, crop_box(source, options, nullptr), flipped);
}

at::Tensor transform_image_unflipped(const io::FittedImage& image,
                                     const TransformOptions& options) {
  return io::pixels_to_tensor(crop(image, options, nullptr));
}

io::ImageSize draw_transform(io::ImageSize source, const TransformOptions& options,
                             at::Generator& gen) {
  const CropBox c = crop_box(source, options, &gen);
  draw_flip(options, gen);
  return {c.width, c.height};
}

bool draw_flip(const TransformOptions& options, at::Generator& gen) {
  return options.random_flip && at::rand({1}, gen).item<float>() < 0.5f;
}

}  // namespace sdtune::data
