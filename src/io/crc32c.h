#pragma once
// CRC-32C (Castagnoli), the checksum of TFRecord framing in TensorBoard event files. Written here
// because Debian 12 packages no crc32c library; a table-driven loop is plenty for log records.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sdtune::io {

// CRC-32C of `size` bytes (reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF):
// crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t size);
inline uint32_t crc32c(std::string_view bytes) {
  return crc32c(bytes.data(), bytes.size());
}

// The masked form TFRecord stores, so that a CRC of data that itself holds CRCs stays unlikely to
// collide: rotate right by 15 bits, then add 0xa282ead8.
inline uint32_t masked_crc32c(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

}  // namespace sdtune::io
