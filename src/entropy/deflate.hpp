// libdeflate wrappers: raw DEFLATE (RFC 1951) streams, one compressor/decompressor per thread.
#pragma once

#include <cstdint>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc {

// Compresses `raw` at `level` (1..12) into a raw DEFLATE stream.
Status deflate_raw(const uint8_t* raw, size_t raw_bytes, int level, std::vector<uint8_t>& out);
// Inflates exactly `raw_bytes` bytes; a stream that ends early, runs long or is malformed is CORRUPT.
Status inflate_raw(const uint8_t* stored, size_t stored_bytes, uint8_t* raw, size_t raw_bytes);

}  // namespace kvtc
