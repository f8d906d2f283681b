// Built instead of parquet.cpp when CMake found no Arrow C++ (pyarrow not importable).
#include "sdtune/error.h"
#include "sdtune/io/parquet.h"

namespace sdtune::io {

std::vector<ParquetImageRow> read_parquet_images(const std::filesystem::path& file,
                                                 const std::string&, const std::string&, int64_t) {
  throw Error("this sdtune was built without Parquet support (pip install pyarrow and rebuild)",
              file.string());
}

}  // namespace sdtune::io
