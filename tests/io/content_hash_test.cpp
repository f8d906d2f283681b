#include "sdtune/io/content_hash.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "sdtune/error.h"

namespace sdtune::io {
namespace {

// The one-shot XXH3-128 of libxxhash, as canonical (big-endian) hex: the reference for the
// streaming hash.
std::string one_shot(const std::string& data) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(data.data(), data.size()));
  char hex[33];
  for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", c.digest[i]);
  return hex;
}

TEST(ContentHash, EmptyInputIsXxh3Vector) {
  // XXH3-128 of no bytes, as `xxhsum -H2` prints it.
  EXPECT_EQ(ContentHash().hex(), "99aa06d3014798d86001c324468d497f");
}

TEST(ContentHash, StreamingEqualsOneShot) {
  std::string data;
  for (int i = 0; i < 5000; ++i) data.push_back(static_cast<char>((i * 131) % 251));
  ContentHash h;
  h.bytes(data.data(), 17)
      .bytes(data.data() + 17, 3000)
      .bytes(data.data() + 3017, data.size() - 3017);
  EXPECT_EQ(h.hex(), one_shot(data));
}

TEST(ContentHash, FieldsAreFramed) {
  EXPECT_NE(ContentHash().field("ab").field("c").hex(), ContentHash().field("a").field("bc").hex());
  EXPECT_EQ(ContentHash().field("ab").field(int64_t{7}).hex(),
            ContentHash().field("ab").field(int64_t{7}).hex());
  EXPECT_NE(ContentHash().field(int64_t{1}).hex(), ContentHash().field(int64_t{256}).hex());
}

TEST(ContentHash, FileEqualsItsBytes) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("sdtune_content_hash_" + std::to_string(::getpid()) + ".bin");
  std::string data(3 << 20, 'x');  // over the 1 MiB read buffer
  for (size_t i = 0; i < data.size(); i += 4099) data[i] = static_cast<char>(i);
  std::ofstream(path, std::ios::binary) << data;
  EXPECT_EQ(ContentHash().file(path).hex(), one_shot(data));
  std::filesystem::remove(path);
}

TEST(ContentHash, MissingFileNamesIt) {
  try {
    ContentHash().file("/nonexistent/sdtune/weights.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), "/nonexistent/sdtune/weights.safetensors");
  }
}

}  // namespace
}  // namespace sdtune::io
