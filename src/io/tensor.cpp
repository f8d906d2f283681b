#include "sdtune/io/tensor.h"

#include <cstring>

#include "sdtune/error.h"

namespace sdtune::io {

at::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::BOOL:
      return at::kBool;
    case DType::U8:
      return at::kByte;
    case DType::I8:
      return at::kChar;
    case DType::I16:
      return at::kShort;
    case DType::U16:
      return at::kUInt16;
    case DType::I32:
      return at::kInt;
    case DType::U32:
      return at::kUInt32;
    case DType::I64:
      return at::kLong;
    case DType::U64:
      return at::kUInt64;
    case DType::F16:
      return at::kHalf;
    case DType::BF16:
      return at::kBFloat16;
    case DType::F32:
      return at::kFloat;
    case DType::F64:
      return at::kDouble;
    case DType::C64:
      return at::kComplexFloat;
    case DType::F8_E4M3:
      return at::kFloat8_e4m3fn;
    case DType::F8_E5M2:
      return at::kFloat8_e5m2;
    case DType::F8_E8M0:
      return at::kFloat8_e8m0fnu;
    default:
      break;
  }
  throw Error("dtype " + std::string(dtype_name(dtype)) + " has no LibTorch equivalent");
}

DType from_scalar_type(at::ScalarType type) {
  for (DType d : {DType::BOOL, DType::U8, DType::I8, DType::I16, DType::U16, DType::I32, DType::U32,
                  DType::I64, DType::U64, DType::F16, DType::BF16, DType::F32, DType::F64,
                  DType::C64, DType::F8_E4M3, DType::F8_E5M2, DType::F8_E8M0})
    if (to_scalar_type(d) == type) return d;
  throw Error(std::string("torch dtype ") + c10::toString(type) +
              " cannot be stored in safetensors");
}

at::Tensor to_tensor(const TensorView& view) {
  at::Tensor out = at::empty(view.shape, at::TensorOptions().dtype(to_scalar_type(view.dtype)));
  if (view.nbytes > 0) std::memcpy(out.data_ptr(), view.data, view.nbytes);
  return out;
}

std::map<std::string, at::Tensor> read_tensors(const std::filesystem::path& path) {
  SafetensorsFile file = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& view : file.tensors()) {
    try {
      out.emplace(view.name, to_tensor(view));
    } catch (const Error& e) {
      throw e.with_key(view.name).with_file(path.string());
    }
  }
  return out;
}

void write_tensors(const std::filesystem::path& path,
                   const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;  // contiguous CPU copies must outlive the write
  std::vector<TensorWrite> writes;
  keep.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    keep.push_back(tensor.detach().to(at::kCPU).contiguous());
    const at::Tensor& t = keep.back();
    writes.push_back({name, from_scalar_type(t.scalar_type()), t.sizes().vec(), t.data_ptr()});
  }
  write_safetensors(path, writes, metadata);
}

}  // namespace sdtune::io
