// Decoding straight to the training size (io::read_image_fitted) gives the pixels of decoding the
// whole image and resizing it; io::check_image decodes every pixel and reports the size.
#include "sdtune/io/image.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "sdtune/error.h"

namespace fs = std::filesystem;
using namespace sdtune::io;

namespace {

// A noisy width × height PNG in a fresh temporary folder.
fs::path noise_png(const std::string& name, int64_t width, int64_t height) {
  const fs::path dir =
      fs::temp_directory_path() / ("sdtune-image-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / name;
  fs::remove(path);
  at::manual_seed(0);
  write_png(path, at::randint(0, 256, {height, width, 3}, at::kByte));
  return path;
}

TEST(ReadImageFitted, EqualsDecodingWholeThenResizing) {
  const fs::path png = noise_png("noise.png", 300, 200);
  for (const ImageSize target :
       {ImageSize{96, 64}, ImageSize{150, 97}, ImageSize{600, 400}, ImageSize{300, 200}}) {
    const FittedImage fitted =
        read_image_fitted(ImageSource::file(png), kMaxImagePixels, [&](ImageSize source) {
          EXPECT_EQ(source, (ImageSize{300, 200}));
          return target;
        });
    const at::Tensor whole = read_image_rgb(png);
    const at::Tensor expected =
        target == ImageSize{300, 200} ? whole : resize_image(whole, target.width, target.height);
    EXPECT_EQ(fitted.source, (ImageSize{300, 200}));
    ASSERT_EQ(fitted.rgb.sizes(), expected.sizes()) << target.width << "x" << target.height;
    EXPECT_TRUE(at::equal(fitted.rgb, expected)) << target.width << "x" << target.height;
  }
}

TEST(ReadImageFitted, ReadsBytesInMemoryAsTheFile) {
  const fs::path png = noise_png("bytes.png", 120, 80);
  std::ifstream in(png, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto fit = [](ImageSize) { return ImageSize{48, 32}; };
  const FittedImage a = read_image_fitted(ImageSource::file(png), kMaxImagePixels, fit);
  const FittedImage b = read_image_fitted(ImageSource::memory(bytes.data(), bytes.size(), "row 3"),
                                          kMaxImagePixels, fit);
  EXPECT_TRUE(at::equal(a.rgb, b.rgb));
}

TEST(CheckImage, GivesTheSizeAndFindsTruncation) {
  const fs::path png = noise_png("check.png", 64, 48);
  EXPECT_EQ(check_image(ImageSource::file(png), kMaxImagePixels), (ImageSize{64, 48}));
  std::ifstream in(png, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes.resize(bytes.size() * 2 / 3);  // the header survives; the pixel data does not
  try {
    check_image(ImageSource::memory(bytes.data(), bytes.size(), "cut.png"), kMaxImagePixels);
    FAIL() << "a truncated PNG passed the check";
  } catch (const sdtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.png"), std::string::npos) << e.what();
  }
  EXPECT_THROW(check_image(ImageSource::file(png), 64 * 48 - 1), sdtune::Error);
}

}  // namespace
