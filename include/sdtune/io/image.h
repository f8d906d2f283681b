#pragma once
// Image files through libvips: reading any format it decodes (JPEG, PNG, WebP, TIFF, ...) into
// 8-bit RGB, and writing PNGs with text chunks.
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

namespace sdtune::io {

// The most pixels an image may have before it is decoded: PIL's limit, twice its
// MAX_IMAGE_PIXELS (1024³ / 4 / 3), above which PIL raises DecompressionBombError. A 2.6 MB PNG
// can declare 30000 × 30000 pixels, 2.7 GB of RGB.
constexpr int64_t kMaxImagePixels = 2 * (1024LL * 1024 * 1024 / 4 / 3);

// uint8 [H,W,3] RGB. EXIF orientation is applied; grayscale, CMYK, palette and 16-bit images are
// converted to 8-bit sRGB; alpha is flattened onto white. An Error naming the file when it is
// missing, truncated or not an image, or when its header declares more than `max_pixels` pixels
// (checked before anything is decoded).
at::Tensor read_image_rgb(const std::filesystem::path& path, int64_t max_pixels = kMaxImagePixels);

// The same from an image file held in memory (`size` bytes at `data`, e.g. a parquet row); errors
// name `name`.
at::Tensor read_image_rgb(const void* data, size_t size, const std::string& name,
                          int64_t max_pixels = kMaxImagePixels);

// Where an image file's bytes are: a file, or `size` bytes at `data` (e.g. a parquet row), which
// must outlive the call; `name` names it in errors.
struct ImageSource {
  std::filesystem::path name;
  const void* data = nullptr;
  size_t size = 0;

  static ImageSource file(std::filesystem::path path) { return {std::move(path)}; }
  static ImageSource memory(const void* data, size_t size, std::string name) {
    return {std::move(name), data, size};
  }
};

struct ImageSize {
  int64_t width = 0, height = 0;
  bool operator==(const ImageSize&) const = default;
};

// The size (width, height) that an image of the given size, as displayed (EXIF orientation
// applied), is to be resized to.
using FitSize = std::function<ImageSize(ImageSize)>;

struct FittedImage {
  at::Tensor rgb;    // uint8 [H,W,3], already the FitSize's size
  ImageSize source;  // the image's own size, as displayed
};

// The image resized, while it is decoded, to `fit`'s size for it (Lanczos-3, as resize_image):
// libvips streams the file through the resize, so that memory follows the fitted size and not the
// source's (a 100-megapixel photo for a 512-pixel model costs a few lines of it at a time). Pixels
// equal those of resize_image(read_image_rgb(...)) for an upright image; an EXIF-rotated one is
// rotated after the resize. Errors as read_image_rgb.
FittedImage read_image_fitted(const ImageSource& source, int64_t max_pixels, const FitSize& fit);

// The image's size as displayed, after decoding every pixel without keeping them (so a truncated
// or corrupt file is found) in memory of a few lines. Errors as read_image_rgb.
ImageSize check_image(const ImageSource& source, int64_t max_pixels);

// Resizes uint8 [H,W,3] to width × height with a Lanczos-3 filter.
at::Tensor resize_image(const at::Tensor& rgb, int64_t width, int64_t height);

// Writes uint8 [H,W,3] as an 8-bit PNG with the given tEXt chunks (e.g. "parameters", which
// A1111-compatible tools read). Never overwrites: an existing `path` is an Error. The file appears
// whole or not at all (temporary file, then rename).
void write_png(const std::filesystem::path& path, const at::Tensor& rgb,
               const std::map<std::string, std::string>& text = {});

// uint8 [H,W,3] as the bytes of an 8-bit RGB PNG file, with the given tEXt chunks (none: e.g. the
// validation images in TensorBoard event files; "parameters": an image served over HTTP).
std::string encode_png(const at::Tensor& rgb, const std::map<std::string, std::string>& text = {});

// Standard base64 (glib's), as A1111's API carries images.
std::string base64_encode(std::string_view bytes);
// The bytes of base64 text; an Error for characters outside the alphabet.
std::string base64_decode(std::string_view text);

// uint8 [H,W,3] as a PNG data URL ("data:image/png;base64,..."; glib's base64), as chat APIs take
// images inline.
std::string png_data_url(const at::Tensor& rgb);

// One image of `rows` × `cols` cells (uint8 [H,W,3] each, row-major), white background, with a
// text label left of each row and above each column: the side-by-side comparisons users make
// (base against fine-tuned model, plain against engineered prompt, several seeds). An empty label
// list gives blank labels; otherwise it needs one label per row (column).
at::Tensor labelled_grid(const std::vector<at::Tensor>& cells, int64_t rows, int64_t cols,
                         const std::vector<std::string>& row_labels,
                         const std::vector<std::string>& col_labels);

}  // namespace sdtune::io
