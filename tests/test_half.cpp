// fp16 and bf16 conversions: every 16-bit pattern, rounding to nearest even, overflow, subnormals.
// The oracle is a plain search over the ordered list of 16-bit values, computed in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "util/half.hpp"

namespace kvtc {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value of an fp16 pattern from its fields, independently of f16_to_f32.
double f16_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  double v;
  if (exp == 0) {
    v = std::ldexp(double(man), -24);
  } else if (exp == 31) {
    v = man == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else {
    v = std::ldexp(1.0 + man / 1024.0, exp - 15);
  }
  return sign ? -v : v;
}

// Nearest fp16 to x with ties to the even pattern; beyond the largest finite value by half an ulp: inf.
uint16_t f16_oracle(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(double(x));
  if (a >= 65520.0) return sign | 0x7c00;
  uint16_t lo = 0;  // largest non-negative pattern whose value is <= a (values grow with the pattern)
  for (int step = 0x4000; step > 0; step >>= 1)
    if (lo + step < 0x7c00 && f16_value(uint16_t(lo + step)) <= a) lo = uint16_t(lo + step);
  const double dlo = a - f16_value(lo), dhi = f16_value(uint16_t(lo + 1)) - a;
  uint16_t r = lo;
  if (dhi < dlo || (dhi == dlo && (lo & 1))) r = uint16_t(lo + 1);
  return sign | r;
}

// Nearest bf16 (the top half of an fp32) with ties to even.
uint16_t bf16_oracle(float x) {
  const uint32_t u = bits_of(x);
  const uint16_t lo = uint16_t(u >> 16);
  const double a = std::fabs(double(x));
  const double vlo = std::fabs(double(float_of(uint32_t(lo) << 16)));
  const double vhi = (lo & 0x7fff) == 0x7f7f ? std::ldexp(1.0, 128)  // next is infinity: treat as 2^128
                                             : std::fabs(double(float_of(uint32_t(lo + 1) << 16)));
  const double dlo = a - vlo, dhi = vhi - a;
  return (dhi < dlo || (dhi == dlo && (lo & 1))) ? uint16_t(lo + 1) : lo;
}

bool f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

TEST(Half, EveryF16PatternRoundTrips) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint16_t h = uint16_t(p);
    const float f = f16_to_f32(h);
    if (f16_is_nan(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << p;
      const uint16_t back = f32_to_f16(f);
      ASSERT_TRUE(f16_is_nan(back)) << std::hex << p;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << "NaN sign, pattern " << std::hex << p;
      continue;
    }
    ASSERT_EQ(double(f), f16_value(h)) << std::hex << p;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << p;
  }
}

TEST(Half, EveryBf16PatternRoundTrips) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint16_t h = uint16_t(p);
    const float f = bf16_to_f32(h);
    ASSERT_EQ(bits_of(f), p << 16);
    if (bf16_is_nan(h)) {
      ASSERT_TRUE(bf16_is_nan(f32_to_bf16(f))) << std::hex << p;
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f), h) << std::hex << p;
  }
}

TEST(Half, F16RoundsToNearestEven) {
  const float one = 1.0f, ulp = std::ldexp(1.0f, -10);
  EXPECT_EQ(f32_to_f16(one + ulp / 2), 0x3c00);            // tie, 1.0 is even
  EXPECT_EQ(f32_to_f16(one + 3 * ulp / 2), 0x3c02);        // tie, 1 + 2 ulp is even
  EXPECT_EQ(f32_to_f16(std::nextafter(one + ulp / 2, 2.0f)), 0x3c01);  // just above a tie: up
  EXPECT_EQ(f32_to_f16(std::nextafter(one + ulp / 2, 0.0f)), 0x3c00);  // just below: down
  EXPECT_EQ(f32_to_f16(-(one + 3 * ulp / 2)), 0xbc02);
  EXPECT_EQ(f32_to_f16(2048.0f + 1.0f), 0x6800);           // 2049 is a tie between 2048 and 2050
  EXPECT_EQ(f32_to_f16(2048.0f + 3.0f), 0x6802);           // 2051: tie, 2052 is even
}

TEST(Half, Bf16RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -7);
  EXPECT_EQ(f32_to_bf16(1.0f + ulp / 2), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * ulp / 2), 0x3f82);
  EXPECT_EQ(f32_to_bf16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(-(1.0f + 3 * ulp / 2)), 0xbf82);
}

TEST(Half, F16OverflowGoesToInfinity) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);                       // largest finite
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bff);  // below the midpoint to 65536
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                       // the midpoint rounds to even: inf
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
}

TEST(Half, Bf16OverflowAndNaN) {
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up past the largest bf16
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // A signalling NaN whose payload sits only in the low 16 bits must not truncate to infinity.
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(float_of(0x7f800001u))));
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(float_of(0xffc00000u))));
  EXPECT_TRUE(f16_is_nan(f32_to_f16(float_of(0x7f800001u))));
}

TEST(Half, F16Subnormals) {
  const float tiny = std::ldexp(1.0f, -24);  // smallest fp16 subnormal
  EXPECT_EQ(f32_to_f16(tiny), 0x0001);
  EXPECT_EQ(f16_to_f32(0x0001), tiny);
  EXPECT_EQ(f32_to_f16(tiny / 2), 0x0000);                           // tie with 0: even
  EXPECT_EQ(f32_to_f16(std::nextafter(tiny / 2, 1.0f)), 0x0001);     // just above: up
  EXPECT_EQ(f32_to_f16(3 * tiny / 2), 0x0002);                       // tie between 1 and 2: even
  EXPECT_EQ(f32_to_f16(-tiny), 0x8001);
  EXPECT_EQ(f32_to_f16(1023 * tiny), 0x03ff);                        // largest subnormal
  EXPECT_EQ(f32_to_f16(1023.5f * tiny), 0x0400);                     // tie with the smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -40)), 0x0000);              // far below: signed zero
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -40)), 0x8000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
}

// fp32 -> 16 bits against the oracle over a spread of fp32 patterns (every 1021st, all exponents and
// both signs) and every pattern near the fp16 boundaries.
TEST(Half, MatchesOracleOnManyFloats) {
  auto check = [](uint32_t u) {
    const float x = float_of(u);
    if (std::isnan(x)) return;
    ASSERT_EQ(f32_to_f16(x), f16_oracle(x)) << std::hex << "fp32 pattern " << u;
    ASSERT_EQ(f32_to_bf16(x), bf16_oracle(x)) << std::hex << "fp32 pattern " << u;
  };
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 1021) check(uint32_t(u));
  for (uint32_t base : {0x33000000u, 0x33800000u, 0x38800000u, 0x477fe000u, 0x477ff000u, 0x3f800000u})
    for (uint32_t d = 0; d < 0x4000; ++d) {
      check(base - 0x2000 + d);
      check((base - 0x2000 + d) | 0x80000000u);
    }
}

}  // namespace
}  // namespace kvtc
