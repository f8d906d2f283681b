#pragma once
// A folder of safetensors files, one per content key (DIR/ab/abcdef….safetensors for the key
// "abcdef…"), that runs share: what one run computed, the next reads back.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace sdtune::io {

class TensorCache {
 public:
  explicit TensorCache(std::filesystem::path dir) : dir_(std::move(dir)) {}

  // The tensors stored under `key` (CPU, as stored), or nullopt when there is no entry. An entry
  // that cannot be read (a disk error, a file damaged by hand) gets a warning naming it and counts
  // as absent, so that it is computed again and overwritten.
  std::optional<std::map<std::string, at::Tensor>> get(const std::string& key) const;

  // Stores an entry atomically (temporary file, then rename): a reader, in this run or another
  // one at the same time, sees the whole entry or none.
  void put(const std::string& key,
           const std::vector<std::pair<std::string, at::Tensor>>& tensors) const;

  std::filesystem::path path_of(const std::string& key) const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

// Where caches go unless told otherwise: $SDTUNE_CACHE_DIR, else $XDG_CACHE_HOME/sdtune, else
// ~/.cache/sdtune (as Hugging Face tools keep theirs in ~/.cache/huggingface).
std::filesystem::path default_cache_dir();

}  // namespace sdtune::io
