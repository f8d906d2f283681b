#pragma once
// Images as the models see them: uint8 RGB pixels [..., H, W, 3] <-> float [..., 3, H, W] in
// [-1, 1], what the VAE encodes and decodes. The one conversion in each direction, for training
// images, img2img inputs, generated images and VAE reconstructions.
#include <ATen/ATen.h>

namespace sdtune::io {

// x / 127.5 - 1, float32 (torchvision's ToTensor + Normalize([0.5], [0.5])).
at::Tensor pixels_to_tensor(const at::Tensor& rgb);

// round(255 · clamp(x / 2 + 0.5, 0, 1)) as uint8 on the CPU, as diffusers' image processor
// makes it (the scaling in x's dtype, the rounding in float32).
at::Tensor tensor_to_pixels(const at::Tensor& image);

}  // namespace sdtune::io
