// Code compiled for the host and the GPU alike (KVTC_HD): IEEE operations rounded once each, bit
// casts, and the fp16 / bf16 conversions of src/util/half.cpp bit for bit. Every float and double
// operation is one IEEE operation rounded to nearest: on the device through the __f*_rn / __d*_rn
// intrinsics, which nvcc never fuses into a multiply-add; on the host through plain operators, which
// the x86-64 baseline (no FMA) never fuses either. The format's per-element rules (format/quant_rules.hpp,
// format/ecsq_rules.hpp) are written with these, so that the CPU and the GPU compute them alike.
//
// No CUDA headers, no allocation, no std containers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVTC_HD __host__ __device__
#else
#define KVTC_HD
#endif

namespace kvtc {


// ---------------------------------------------------------------------------------------------
// One rounding per operation.

KVTC_HD inline float f_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KVTC_HD inline float f_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
KVTC_HD inline float f_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KVTC_HD inline float f_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
KVTC_HD inline double d_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
KVTC_HD inline double d_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
KVTC_HD inline double d_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
KVTC_HD inline double d_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
KVTC_HD inline double d_sqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
KVTC_HD inline double d_abs(double a) {
#if defined(__CUDA_ARCH__)
  return fabs(a);
#else
  return std::fabs(a);
#endif
}
KVTC_HD inline float f_rint(float a) {  // round half to even, as std::nearbyint in the default mode
#if defined(__CUDA_ARCH__)
  return rintf(a);
#else
  return std::nearbyint(a);
#endif
}
KVTC_HD inline uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
KVTC_HD inline float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KVTC_HD inline float abs_bits(float v) { return bits_f32(f32_bits(v) & 0x7fffffffu); }  // |v|, NaN kept

// Little-endian integers at any byte address (the container's byte order; no alignment assumed).
KVTC_HD inline void put_le32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
KVTC_HD inline void put_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}
KVTC_HD inline uint32_t get_le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// ---------------------------------------------------------------------------------------------
// Conversions: src/util/half.{hpp,cpp} bit for bit.

KVTC_HD inline uint16_t f32_to_f16_bits(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {                                  // subnormal or zero
    const float scaled = f_mul(bits_f32(abs), 16777216.0f);  // exact
    return uint16_t(sign | uint16_t(f_rint(scaled)));
  }
  uint32_t v = abs - (112u << 23);
  v += 0xfffu + ((v >> 13) & 1u);
  return uint16_t(sign | uint16_t(v >> 13));
}

KVTC_HD inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    return bits_f32(f32_bits(f_mul(float(man), 5.9604644775390625e-8f)) | sign);  // man * 2^-24, exact
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

KVTC_HD inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace kvtc
