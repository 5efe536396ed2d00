// The reference decoder: a slow, plain reading of docs/FORMAT.md in the spec's own order, written
// independently of the fast paths (zlib instead of libdeflate, bit-by-bit unpacking, double-precision
// reconstruction and RoPE from the formula). It is the oracle that every decoder is tested against.
#pragma once

#include <cstdint>
#include <vector>

#include "core/calibration_data.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

// The coefficients the reference decoder reconstructs compressed tokens from (section 6 step 1, or
// section 9's rule for ECSQ streams), per stream: coef[s][(t - n_head_exact) * basis_rank + j], 0 for
// components not coded. Tests hold the fast decoders' coefficients to these, bit for bit where the spec
// fixes the arithmetic (every value is a binary32 result, stored exactly in a double).
struct ReferenceCoefficients {
  std::vector<double> coef[2];
};

// coefficients (optional): also return the coefficients (valid when the result is OK).
Result<KVCache> reference_decode(const CalibrationData& cal, const uint8_t* bytes, size_t size_bytes,
                                 ReferenceCoefficients* coefficients = nullptr);

}  // namespace kvtc
