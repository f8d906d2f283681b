#include "sdtune/io/pixels.h"

namespace sdtune::io {

at::Tensor pixels_to_tensor(const at::Tensor& rgb) {
  return rgb.movedim(-1, -3).to(at::kFloat).div(127.5).sub(1.0).contiguous();
}

at::Tensor tensor_to_pixels(const at::Tensor& image) {
  const at::Tensor unit = (image / 2 + 0.5).clamp(0, 1).to(at::kCPU).movedim(-3, -1).to(at::kFloat);
  return (unit * 255).round().to(at::kByte).contiguous();
}

}  // namespace sdtune::io
