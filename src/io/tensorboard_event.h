#pragma once
// Serialized tensorboard.Event messages (our subset of TensorBoard's event.proto/summary.proto,
// src/io/tensorboard_event.proto). Torch-free, in a library of its own: protobuf's headers must not
// meet the copy of them that LibTorch's include folder carries.
#include <cstdint>
#include <string>

namespace sdtune::io::tensorboard_event {

// The first event of every file: file_version "brain.Event:2" at step 0.
std::string file_version(double wall_time);

// A scalar, stored as float32 as TensorBoard does.
std::string scalar(double wall_time, int64_t step, const std::string& tag, float value);

// An image (Summary.Image): `png` is an encoded RGB PNG of width × height.
std::string image(double wall_time, int64_t step, const std::string& tag, int32_t height,
                  int32_t width, const std::string& png);

}  // namespace sdtune::io::tensorboard_event
