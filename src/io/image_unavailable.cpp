// Built instead of image.cpp when CMake is told -DSDTUNE_IMAGES=OFF: a build for a machine without
// libvips (the GPU machine of bench/gpu_check.sh), where only tensors go in and out.
#include "sdtune/error.h"
#include "sdtune/io/image.h"

namespace sdtune::io {
namespace {

[[noreturn]] void unavailable(const std::string& what) {
  throw Error(
      "this sdtune was built without image support (libvips; rebuild with -DSDTUNE_IMAGES=ON)",
      what);
}

}  // namespace

at::Tensor read_image_rgb(const std::filesystem::path& path, int64_t) {
  unavailable(path.string());
}

at::Tensor read_image_rgb(const void*, size_t, const std::string& name, int64_t) {
  unavailable(name);
}

FittedImage read_image_fitted(const ImageSource& source, int64_t, const FitSize&) {
  unavailable(source.name.string());
}

ImageSize check_image(const ImageSource& source, int64_t) {
  unavailable(source.name.string());
}

at::Tensor resize_image(const at::Tensor&, int64_t, int64_t) {
  unavailable("resize");
}

void write_png(const std::filesystem::path& path, const at::Tensor&,
               const std::map<std::string, std::string>&) {
  unavailable(path.string());
}

std::string encode_png(const at::Tensor&, const std::map<std::string, std::string>&) {
  unavailable("PNG");
}

std::string base64_encode(std::string_view) {
  unavailable("base64");
}

std::string base64_decode(std::string_view) {
  unavailable("base64");
}

std::string png_data_url(const at::Tensor&) {
  unavailable("PNG");
}

at::Tensor labelled_grid(const std::vector<at::Tensor>&, int64_t, int64_t,
                         const std::vector<std::string>&, const std::vector<std::string>&) {
  unavailable("grid");
}

}  // namespace sdtune::io
