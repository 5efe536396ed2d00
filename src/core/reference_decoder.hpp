// The reference decoder: a slow, plain reading of docs/FORMAT.md in the spec's own order, written
// independently of the fast paths (zlib instead of libdeflate, bit-by-bit unpacking, double-precision
// reconstruction and RoPE from the formula). It is the oracle that every decoder is tested against.
#pragma once

#include <cstdint>

#include "core/calibration_data.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

Result<KVCache> reference_decode(const CalibrationData& cal, const uint8_t* bytes, size_t size_bytes);

}  // namespace kvtc
