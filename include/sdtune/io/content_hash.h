#pragma once
// Content hashes for cache keys: XXH3-128 (libxxhash). Not cryptographic, but 128 bits make an
// accidental collision between two training images or two models practically impossible, and at
// several GB/s hashing every image and the model weights at each start costs little.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace sdtune::io {

class ModelFolder;

class ContentHash {
 public:
  ContentHash();
  ~ContentHash();
  ContentHash(const ContentHash&) = delete;
  ContentHash& operator=(const ContentHash&) = delete;

  // Raw bytes, as they are.
  ContentHash& bytes(const void* data, size_t size);
  // A field: its length goes in first, so that ("ab", "c") and ("a", "bc") hash differently.
  ContentHash& field(std::string_view value);
  ContentHash& field(int64_t value);
  // A file's bytes (streamed); an Error naming the file when it cannot be read.
  ContentHash& file(const std::filesystem::path& path);
  // A pipeline component by content: its config.json and weight files (ModelFolder's choice for
  // `variant`), e.g. the VAE whose outputs a cache holds.
  ContentHash& component(const ModelFolder& base, const std::string& name,
                         const std::string& variant);

  // 32 lowercase hex digits of what was hashed so far (the hash can go on after it).
  std::string hex() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace sdtune::io
