#include "sdtune/io/tensor_cache.h"

#include <cstdlib>

#include "sdtune/error.h"
#include "sdtune/io/tensor.h"
#include "sdtune/warning.h"

namespace sdtune::io {
namespace fs = std::filesystem;

fs::path TensorCache::path_of(const std::string& key) const {
  // Two-character subfolders keep folders small for datasets of many thousands of images.
  std::string name = key;
  name += ".safetensors";
  return dir_ / key.substr(0, 2) / name;
}

std::optional<std::map<std::string, at::Tensor>> TensorCache::get(const std::string& key) const {
  const fs::path path = path_of(key);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  try {
    return read_tensors(path);
  } catch (const Error& e) {
    warn("cache entry " + path.string() + " is unreadable, computing it again: " + e.message());
    return std::nullopt;
  }
}

void TensorCache::put(const std::string& key,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors) const {
  const fs::path path = path_of(key);
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) throw Error("cannot create cache folder: " + ec.message(), path.parent_path().string());
  write_tensors(path, tensors);
}

fs::path default_cache_dir() {
  if (const char* dir = std::getenv("SDTUNE_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "sdtune";
  if (const char* home = std::getenv("HOME"); home && *home)
    return fs::path(home) / ".cache" / "sdtune";
  return fs::temp_directory_path() / "sdtune-cache";
}

}  // namespace sdtune::io
