#include "sdtune/io/read_file.h"

#include <fstream>
#include <sstream>

#include "sdtune/error.h"

namespace sdtune::io {

std::string read_file(const std::filesystem::path& path, std::uintmax_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open file (missing or unreadable)", path.string());
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > max_bytes)
    throw Error(
        "larger than " + std::to_string(max_bytes) + " bytes (" + std::to_string(size) + ")",
        path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error("cannot read", path.string());
  std::string text = buffer.str();
  // A file that grew while it was read (or no regular file at all) is held to the same bound.
  if (text.size() > max_bytes)
    throw Error("larger than " + std::to_string(max_bytes) + " bytes", path.string());
  return text;
}

}  // namespace sdtune::io
