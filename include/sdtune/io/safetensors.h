#pragma once
// safetensors: the weight format of diffusers and of every modern SD checkpoint.
// Layout: u64 little-endian header length N, N bytes of JSON header, then the data buffer.
// The reader memory-maps the file and validates the header exactly as the format requires; the
// writer is atomic (temporary file in the same folder, then rename).
// This file has no LibTorch dependency; sdtune/io/tensor.h converts views to torch tensors.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sdtune::io {

// Every dtype of the safetensors format.
enum class DType {
  BOOL,
  U8,
  I8,
  I16,
  U16,
  I32,
  U32,
  I64,
  U64,
  F16,
  BF16,
  F32,
  F64,
  C64,
  F8_E4M3,
  F8_E5M2,
  F8_E8M0,
  F4,
  F6_E2M3,
  F6_E3M2,  // sub-byte types: sizes counted in bits
};

// Size of one element in bits (8 × bytes for the byte-sized types).
std::size_t dtype_bits(DType dtype);
// The format's spelling ("F32", "BF16", ...).
std::string_view dtype_name(DType dtype);
// Inverse of dtype_name; nullopt for an unknown string.
std::optional<DType> parse_dtype(std::string_view name);
// Byte length of a tensor: ceil(numel × bits / 8).
std::size_t tensor_nbytes(DType dtype, const std::vector<int64_t>& shape);

// One tensor inside an open file. `data` points into the mapping and stays valid while the
// SafetensorsFile that produced it lives.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const std::byte* data;
  std::size_t nbytes;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates the file. Throws sdtune::Error naming the file (and the tensor key where
  // one is at fault) on: missing/unreadable file, header length > 100 MB or past the end of file,
  // invalid JSON (or nested deeper than kMaxJsonDepth), unknown dtype, offsets outside the buffer,
  // overlapping or non-contiguous ranges, shape × dtype size != byte length, data that does not end
  // exactly at end of file, `__metadata__` that is not a string-to-string map.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // Tensors in the order of their data offsets.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorView* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Drops the pages under [data, data + size) of a file mapping (a TensorView's data) from this
// process's memory once they have been read. Nothing is lost: touched again, they are read from
// the file. Pages shared with a neighbouring tensor stay.
void release_mapped_pages(const void* data, std::size_t size);

// A tensor to be written: `data` must hold exactly tensor_nbytes(dtype, shape) bytes.
struct TensorWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};

// Writes a safetensors file: header keys sorted, data packed in that order, header padded with
// spaces so that the data buffer starts 8-byte aligned. Atomic: writes `path` + a temporary
// suffix in the same folder, fsyncs, then renames, so an existing file is never left half-written.
// Throws sdtune::Error on duplicate names, wrong data length, or I/O failure.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace sdtune::io
