// libFuzzer target: arbitrary bytes as a Hugging Face dataset's parquet file, read by
// io::read_parquet_images with the "image" and "text" columns: Arrow's footer and page decoding,
// then sdtune's schema checks (the image column binary or {bytes, path}, the caption a string or
// a list of strings) and the cell reads they guard. A bad file must end in sdtune::Error; rows
// that come back are numbered 0, 1, 2, ... in order.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/io/parquet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = sdtune::fuzz::scratch_dir() / "train-00000-of-00001.parquet";
  sdtune::fuzz::write_file(path, std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    // A lower cap than sdtune's 4 GiB: libFuzzer stops a run above 2 GiB.
    const auto rows = sdtune::io::read_parquet_images(path, "image", "text", 256 << 20);
    for (size_t i = 0; i < rows.size(); ++i)
      sdtune::fuzz::check(rows[i].row == static_cast<int64_t>(i), "rows out of order",
                          std::to_string(i));
  } catch (const sdtune::Error&) {
  }
  return 0;
}
