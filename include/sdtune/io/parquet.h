#pragma once
// Image + caption tables in Parquet files, as Hugging Face datasets stores them
// (data/train-00000-of-00001.parquet), read through Apache Arrow C++. Only this part of sdtune
// touches Arrow; a build without it (no pyarrow at configure time) throws an Error here instead.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace sdtune::io {

struct ParquetImageRow {
  int64_t row = 0;                           // 0-based, counted over all row groups of the file
  std::shared_ptr<const std::string> bytes;  // the encoded image file; null for a null cell
  std::string path;                          // the Image feature's "path" field, or ""
  std::string caption;                       // "" for a null caption or an empty list
};

// The most memory Arrow may use while decoding one row group of a file: Hugging Face writes 100
// images per row group (a few hundred MB), and a damaged or hostile file declaring billions of
// rows in a few bytes is refused instead of allocating for them.
constexpr int64_t kMaxParquetRowGroupBytes = 4LL << 30;

// Every row of `file`, in order. `image_column` is a struct {bytes: binary, path: string} (the
// datasets Image feature) or a binary column; `caption_column` is a string or a list of strings
// (the first is taken). Large and view variants of binary/string/list are accepted. An Error
// naming the file when it cannot be read, and naming the columns present when one is missing or
// of another type, and when decoding a row group would take more than `max_row_group_bytes`.
std::vector<ParquetImageRow> read_parquet_images(
    const std::filesystem::path& file, const std::string& image_column,
    const std::string& caption_column, int64_t max_row_group_bytes = kMaxParquetRowGroupBytes);

}  // namespace sdtune::io
