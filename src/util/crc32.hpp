// CRC-32 as zlib computes it (libdeflate's implementation), for callers below the core layer.
#pragma once

#include <libdeflate.h>

#include <cstddef>
#include <cstdint>

namespace kvtc {

// Continues a CRC-32 over more bytes: crc32_update(crc32_update(0, a), b) == CRC of a then b.
// Empty input leaves crc unchanged (libdeflate_crc32 with a null buffer would restart at 0 instead).
inline uint32_t crc32_update(uint32_t crc, const void* data, size_t size_bytes) {
  if (size_bytes == 0) return crc;
  return libdeflate_crc32(crc, data, size_bytes);
}

}  // namespace kvtc
