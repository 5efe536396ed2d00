// Codec 3's per-element rules (docs/FORMAT.md, section 9), one code for the host and the GPU
// (KVTC_HD, format/hd.hpp): the code of a coefficient at a step, its signed symbol with the bucket's
// raw bits, the inverse, and the reconstruction. The CPU encoder and decoder, the GPU decoder and
// calibration all call these; the reference decoder reads the spec on its own.
#pragma once

#include <cstdint>

#include "format/hd.hpp"

namespace kvtc {

// Symbols. A code q maps to a magnitude symbol m: |q| itself up to kEcsqDirectMax, else a bucket
// 101 + e with e = floor(log2(|q| - 100)), followed by e raw bits of |q| - 100 - 2^e. The signed
// symbol is 0 for q = 0, 2m - 1 for q > 0 and 2m for q < 0. A cell's table covers signed symbols
// [0, A - 1) and gives symbol A - 1 to an escape, followed by kEcsqEscapeBits raw bits holding the
// signed symbol (>= A - 1): no code is ever clipped below kEcsqMaxMagnitude.
constexpr int32_t kEcsqDirectMax = 100;
constexpr int kEcsqMaxExponent = 19;
constexpr int32_t kEcsqMaxMagnitude = kEcsqDirectMax + (int32_t(2) << kEcsqMaxExponent) - 1;  // 1,048,675
constexpr int kEcsqMaxMagnitudeSymbol = kEcsqDirectMax + 1 + kEcsqMaxExponent;              // 120
constexpr int kEcsqSignedSymbols = 2 * kEcsqMaxMagnitudeSymbol + 1;                          // 241
constexpr int kEcsqMaxTableAlphabet = kEcsqSignedSymbols + 1;                                // + escape
constexpr int kEcsqEscapeBits = 8;

// The code of c (fp32, each operation rounded as written; NaN gives 0, infinities the largest code).
KVTC_HD inline int32_t ecsq_quantize(float c, float step) {
  const float t = f_add(f_div(abs_bits(c), step), 0.5f);
  int32_t mag = 0;
  if (t >= float(kEcsqMaxMagnitude)) mag = kEcsqMaxMagnitude;
  else if (t >= 1.0f) mag = int32_t(t);  // truncation is floor here: t > 0
  return c < 0.0f ? -mag : mag;
}

// The reconstruction of q (fp32): (float(|q|) + delta) * step with q's sign, 0 for q = 0.
KVTC_HD inline float ecsq_dequantize(int32_t q, float step, float delta) {
  if (q == 0) return 0.0f;
  const float v = f_mul(f_add(float(q < 0 ? -q : q), delta), step);
  return q < 0 ? -v : v;
}

// Signed symbol of q and the bucket's raw bits (n_bits = 0 for |q| <= kEcsqDirectMax).
struct EcsqSymbol {
  uint32_t symbol = 0;
  uint32_t bits = 0;
  int n_bits = 0;
};
KVTC_HD inline EcsqSymbol ecsq_symbol(int32_t q) {
  EcsqSymbol out;
  if (q == 0) return out;
  const uint32_t mag = uint32_t(q < 0 ? -int64_t(q) : q);
  uint32_t m = mag;
  if (mag > uint32_t(kEcsqDirectMax)) {
    const uint32_t r = mag - uint32_t(kEcsqDirectMax);  // >= 1
#if defined(__CUDA_ARCH__)
    const int e = 31 - __clz(int(r));
#else
    const int e = 31 - __builtin_clz(r);
#endif
    m = uint32_t(kEcsqDirectMax + 1 + e);
    out.bits = r - (1u << e);
    out.n_bits = e;
  }
  out.symbol = q > 0 ? 2 * m - 1 : 2 * m;
  return out;
}
// Magnitude symbol m (1..120) of a signed symbol s >= 1: (s + 1) / 2; positive when s is odd.
KVTC_HD inline int ecsq_magnitude_symbol(uint32_t s) { return int((s + 1) / 2); }
// Raw bits after a magnitude symbol m: 0 up to kEcsqDirectMax, else m - 101.
KVTC_HD inline int ecsq_bucket_bits(int m) { return m <= kEcsqDirectMax ? 0 : m - (kEcsqDirectMax + 1); }
// The code of a signed symbol and its bucket bits (the inverse of ecsq_symbol).
KVTC_HD inline int32_t ecsq_code(uint32_t s, uint32_t bucket_bits) {
  if (s == 0) return 0;
  const int m = ecsq_magnitude_symbol(s);
  const int32_t mag = m <= kEcsqDirectMax ? m : kEcsqDirectMax + (int32_t(1) << (m - kEcsqDirectMax - 1)) + int32_t(bucket_bits);
  return (s & 1u) ? mag : -mag;
}

}  // namespace kvtc
