#pragma once
// Channels-last (NHWC) memory format for a model's convolutions. PyTorch runs a convolution in
// NHWC when its input or its weight is laid out so, and its output stays NHWC: with the 4-D
// weights converted, the activations of a UNet or VAE flow NHWC from the first convolution on.
// cuDNN's fastest tensor-core kernels (and oneDNN's on the CPU) are NHWC ones; NCHW tensors are
// transposed around each of them otherwise. Values are unchanged; only the strides differ, so a
// state dict written from such a model is the same (writers make their tensors contiguous).
#include <torch/nn/module.h>

namespace sdtune::models {

// Lays every 4-D parameter and buffer of `module` out channels-last, in place (the tensors keep
// their identity: an optimizer or a CUDA graph holding them sees the new layout). Returns how
// many tensors were converted.
int64_t to_channels_last(torch::nn::Module& module);

}  // namespace sdtune::models
