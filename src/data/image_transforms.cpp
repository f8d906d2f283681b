#include "sdtune/data/image_transforms.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/io/pixels.h"

namespace sdtune::data {

at::Tensor resize_shorter_side(const at::Tensor& rgb, int64_t size) {
  const int64_t h = rgb.size(0), w = rgb.size(1);
  if (std::min(h, w) == size) return rgb;
  // torchvision: the long side is int(size * long / short), i.e. truncated.
  const int64_t new_w = h <= w ? size * w / h : size;
  const int64_t new_h = h <= w ? size : size * h / w;
  return io::resize_image(rgb, new_w, new_h);
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
  const int64_t h = rgb.size(0), w = rgb.size(1);
  // Scale so that the image covers the bucket: by height when the image is wider than it.
  const double aspect = static_cast<double>(w) / static_cast<double>(h);
  const double bucket_aspect =
      static_cast<double>(bucket.width) / static_cast<double>(bucket.height);
  const double scale = aspect > bucket_aspect ? static_cast<double>(bucket.height) / h
                                              : static_cast<double>(bucket.width) / w;
  const int64_t new_w = std::max(bucket.width, static_cast<int64_t>(w * scale + 0.5));
  const int64_t new_h = std::max(bucket.height, static_cast<int64_t>(h * scale + 0.5));
  at::Tensor img = (new_w == w && new_h == h) ? rgb : io::resize_image(rgb, new_w, new_h);
  const int64_t top = (new_h - bucket.height) / 2, left = (new_w - bucket.width) / 2;
  return img.slice(0, top, top + bucket.height).slice(1, left, left + bucket.width).contiguous();
}

int64_t bucket_index(int64_t width, int64_t height, const std::vector<BucketResolution>& buckets) {
  const BucketResolution b = select_bucket(width, height, buckets);
  return static_cast<int64_t>(std::find(buckets.begin(), buckets.end(), b) - buckets.begin());
}

namespace {

// uint8 [H,W,3] -> the crop (uint8): the bucket, or Resize(R) then a center crop or, with `gen`,
// a random one.
at::Tensor crop(const at::Tensor& rgb, const TransformOptions& options, at::Generator* gen) {
  if (!options.buckets.empty())
    return resize_to_bucket(
        rgb, options.buckets[bucket_index(rgb.size(1), rgb.size(0), options.buckets)]);
  const int64_t r = options.resolution;
  if (r <= 0) throw Error("resolution must be positive, got " + std::to_string(r));
  at::Tensor img = resize_shorter_side(rgb, r);
  const int64_t h = img.size(0), w = img.size(1);
  int64_t top = 0, left = 0;
  if (options.center_crop) {
    top = center_crop_offset(h, r);
    left = center_crop_offset(w, r);
  } else {
    if (!gen) throw Error("a random crop draws from a generator: it cannot be cached");
    top = at::randint(0, h - r + 1, {1}, *gen, at::kLong).item<int64_t>();
    left = at::randint(0, w - r + 1, {1}, *gen, at::kLong).item<int64_t>();
  }
  return img.slice(0, top, top + r).slice(1, left, left + r);
}

}  // namespace

at::Tensor transform_image(const at::Tensor& rgb, const TransformOptions& options,
                           at::Generator& gen) {
  at::Tensor img = crop(rgb, options, &gen);
  if (draw_flip(options, gen)) img = img.flip({1});
  return io::pixels_to_tensor(img);
}

at::Tensor transform_image_unflipped(const at::Tensor& rgb, const TransformOptions& options) {
  return io::pixels_to_tensor(crop(rgb, options, nullptr));
}

bool draw_flip(const TransformOptions& options, at::Generator& gen) {
  return options.random_flip && at::rand({1}, gen).item<float>() < 0.5f;
}

}  // namespace sdtune::data
