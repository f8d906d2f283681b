#pragma once
// Bridges safetensors files and LibTorch tensors.
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/safetensors.h"

namespace sdtune::io {

// The torch dtype of a safetensors dtype; an Error for dtypes torch cannot hold (F4, F6, ...).
at::ScalarType to_scalar_type(DType dtype);
DType from_scalar_type(at::ScalarType type);

// A CPU tensor holding a copy of the view's data.
at::Tensor to_tensor(const TensorView& view);

// Every tensor of one file, copied to CPU tensors in their stored dtype.
std::map<std::string, at::Tensor> read_tensors(const std::filesystem::path& path);

// Writes tensors (any device/layout; copied to contiguous CPU) atomically as safetensors.
void write_tensors(const std::filesystem::path& path,
                   const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                   const std::map<std::string, std::string>& metadata = {});

}  // namespace sdtune::io
