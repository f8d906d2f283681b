#include "sdtune/data/image_transforms.h"

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

namespace sdtune::data {
namespace {

TEST(BucketResolutions, MultiplesOf64WithinAreaAndIncludeSquare) {
  const auto buckets = make_bucket_resolutions(512, 512, 256, 1024, 64);
  ASSERT_FALSE(buckets.empty());
  for (const auto& b : buckets) {
    EXPECT_EQ(b.width % 64, 0) << b.width << "x" << b.height;
    EXPECT_EQ(b.height % 64, 0) << b.width << "x" << b.height;
    EXPECT_LE(b.width * b.height, 512 * 512);
    EXPECT_GE(std::min(b.width, b.height), 256);
    EXPECT_LE(std::max(b.width, b.height), 1024);
  }
  EXPECT_NE(std::find(buckets.begin(), buckets.end(), BucketResolution{512, 512}), buckets.end());
  EXPECT_TRUE(std::is_sorted(buckets.begin(), buckets.end()));
  // Every bucket has its transpose.
  for (const auto& b : buckets)
    EXPECT_NE(std::find(buckets.begin(), buckets.end(), BucketResolution{b.height, b.width}),
              buckets.end());
}

TEST(BucketResolutions, WideImageGetsWideBucket) {
  const auto buckets = make_bucket_resolutions(512, 512);
  const BucketResolution b = select_bucket(2000, 1000, buckets);
  EXPECT_GT(b.width, b.height);
  EXPECT_NEAR(static_cast<double>(b.width) / b.height, 2.0, 0.25);
  EXPECT_EQ(select_bucket(700, 700, buckets), (BucketResolution{512, 512}));
}

TEST(BucketResolutions, ResizeToBucketCoversAndCrops) {
  const at::Tensor img = at::randint(0, 256, {100, 200, 3}, at::kByte);
  const at::Tensor out = resize_to_bucket(img, {704, 384});
  EXPECT_EQ(out.size(0), 384);
  EXPECT_EQ(out.size(1), 704);
}

TEST(Transforms, CenterCropOffsetRoundsHalfToEven) {
  EXPECT_EQ(center_crop_offset(10, 10), 0);
  EXPECT_EQ(center_crop_offset(11, 10), 0);  // round(0.5) == 0 in Python
  EXPECT_EQ(center_crop_offset(13, 10), 2);  // round(1.5) == 2
}

TEST(Transforms, ShapeRangeAndSeed) {
  const at::Tensor img = at::randint(0, 256, {40, 60, 3}, at::kByte);
  TransformOptions options{.resolution = 32, .center_crop = false, .random_flip = true};
  at::Generator a = at::make_generator<at::CPUGeneratorImpl>(7);
  at::Generator b = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor x = transform_image(whole_image(img), options, a),
                   y = transform_image(whole_image(img), options, b);
  EXPECT_EQ(x.sizes(), (at::IntArrayRef{3, 32, 32}));
  EXPECT_TRUE(at::equal(x, y));
  EXPECT_GE(x.min().item<float>(), -1.0f);
  EXPECT_LE(x.max().item<float>(), 1.0f);
}

// The latent cache's crops (center or bucket) report the placement the drawing path would: the same
// corner, mirrored the same way when flipped.
TEST(Transforms, FixedCropPlacementIsTheDrawnOne) {
  const at::Tensor img = at::randint(0, 256, {32, 45, 3}, at::kByte);  // 45 - 32 = 13: odd
  for (const bool flip : {false, true}) {
    TransformOptions options{.resolution = 32, .center_crop = true, .random_flip = flip};
    const CropPlacement fixed = fixed_crop_placement({45, 32}, options, flip);
    EXPECT_EQ(fixed.source.width, 45);
    EXPECT_EQ(fixed.crop.width, 32);
    EXPECT_EQ(fixed.top, 0);
    EXPECT_EQ(fixed.left, flip ? 45 - 32 - 6 : 6);  // center offset round(6.5) = 6
    // Draw until the flip comes out as asked, then compare with what the drawing path reports.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    for (int i = 0; i < 32; ++i) {
      CropPlacement drawn;
      transform_image(whole_image(img), options, gen, &drawn);
      const bool was_flipped = drawn.left != 6;
      if (was_flipped != flip) continue;
      EXPECT_EQ(drawn.left, fixed.left);
      EXPECT_EQ(drawn.top, fixed.top);
      break;
    }
  }
}

}  // namespace
}  // namespace sdtune::data
