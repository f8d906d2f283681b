#include "sdtune/io/content_hash.h"

#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"

namespace sdtune::io {

struct ContentHash::State {
  XXH3_state_t* xxh = nullptr;
};

ContentHash::ContentHash() : state_(std::make_unique<State>()) {
  state_->xxh = XXH3_createState();
  if (state_->xxh == nullptr || XXH3_128bits_reset(state_->xxh) != XXH_OK)
    throw Error("cannot initialize the XXH3 hash state");
}

ContentHash::~ContentHash() {
  XXH3_freeState(state_->xxh);
}

ContentHash& ContentHash::bytes(const void* data, size_t size) {
  XXH3_128bits_update(state_->xxh, data, size);
  return *this;
}

ContentHash& ContentHash::field(std::string_view value) {
  field(static_cast<int64_t>(value.size()));
  return bytes(value.data(), value.size());
}

ContentHash& ContentHash::field(int64_t value) {
  // Little-endian regardless of the machine, so that keys are the same everywhere.
  unsigned char le[8];
  for (int i = 0; i < 8; ++i)
    le[i] = static_cast<unsigned char>(static_cast<uint64_t>(value) >> (8 * i));
  return bytes(le, sizeof le);
}

ContentHash& ContentHash::file(const std::filesystem::path& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw Error(std::string("cannot open: ") + std::strerror(errno), path.string());
  std::vector<char> buffer(1 << 20);
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0) bytes(buffer.data(), n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw Error("cannot read", path.string());
  return *this;
}

ContentHash& ContentHash::component(const ModelFolder& base, const std::string& name,
                                    const std::string& variant) {
  const std::filesystem::path dir = base.component_dir(name);
  file(dir / "config.json");
  for (const auto& weights : find_weight_files(dir, variant)) file(weights);
  return *this;
}

std::string ContentHash::hex() const {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(state_->xxh));
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : canonical.digest) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

}  // namespace sdtune::io
