// Conversions between fp32 and the 16-bit float formats (bf16, IEEE fp16). Round to nearest even;
// NaN stays NaN; fp32 -> 16 -> fp32 -> 16 is the identity on 16-bit values.
#pragma once

#include <cstdint>
#include <cstring>

namespace kvtc {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// Rounds f to the nearest fp16 value (as fp32).
inline float round_to_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

}  // namespace kvtc
