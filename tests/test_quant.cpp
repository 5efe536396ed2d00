// Per-group scalar quantisation: the error bounds, code ranges and exactness contracts that the
// allocator, encoders and decoders rely on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/quant.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

constexpr GroupKind kCodedKinds[] = {GroupKind::kInt, GroupKind::kIntAffine};

std::vector<float> gaussian(int n, uint64_t seed, float sigma = 1.0f, float mu = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(mu, sigma);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  return x;
}

// Quantises and reconstructs, returning the squared error and checking the codes' range.
double round_trip(const std::vector<float>& x, GroupKind kind, int w, std::vector<float>* out = nullptr,
                  TokenQuantParams* params = nullptr) {
  const int n = int(x.size());
  std::vector<uint8_t> codes(size_t(n), 0xAA);
  const TokenQuantParams p = quantize_token(x.data(), n, kind, w, codes.data());
  for (uint8_t c : codes) EXPECT_LE(int(c), (1 << w) - 1) << "width " << w;
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_token(codes.data(), n, kind, w, p, y.data());
  double err = 0.0;
  for (int i = 0; i < n; ++i) {
    const double d = double(x[size_t(i)]) - double(y[size_t(i)]);
    err += d * d;
  }
  if (out) *out = y;
  if (params) *params = p;
  return err;
}

TEST(Quant, QuantizationErrorEqualsMeasuredRoundTrip) {
  for (GroupKind kind : kCodedKinds) {
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      for (int n : {1, 3, 4, 16, 17, 64, 1024}) {
        const auto x = gaussian(n, uint64_t(w * 1000 + n), 2.5f, kind == GroupKind::kIntAffine ? 1.0f : 0.0f);
        const double measured = round_trip(x, kind, w);
        const double predicted = quantization_error(x.data(), n, kind, w);
        EXPECT_NEAR(predicted, measured, 1e-12 * (1.0 + measured)) << "kind " << int(kind) << " w " << w << " n " << n;
      }
    }
  }
}

TEST(Quant, DropAndFloat16ErrorsAreTheirDefinitions) {
  const auto x = gaussian(100, 7, 3.0f);
  double energy = 0.0, f16 = 0.0;
  for (float v : x) {
    energy += double(v) * v;
    const double d = double(v) - double(round_to_f16(v));
    f16 += d * d;
  }
  EXPECT_DOUBLE_EQ(quantization_error(x.data(), 100, GroupKind::kDropped, 0), energy);
  EXPECT_DOUBLE_EQ(quantization_error(x.data(), 100, GroupKind::kFloat16, 16), f16);
  EXPECT_GT(f16, 0.0);
}

// The fp16 option's error is exactly the rounding of util/half, over the whole fp16 range.
TEST(Quant, Float16ErrorMatchesHalfConversionEverywhere) {
  std::vector<float> x;
  for (int e = -30; e <= 17; ++e)
    for (float m : {1.0f, 1.0001f, 1.33333f, 1.5f, 1.99951171875f, 1.9999f})
      for (float sign : {1.0f, -1.0f}) x.push_back(sign * std::ldexp(m, e));
  x.push_back(65504.0f);
  x.push_back(65519.0f);
  x.push_back(65520.0f);
  x.push_back(0.0f);
  for (float v : x) {
    const double d = double(v) - double(round_to_f16(v));
    const double expected = std::isfinite(d) ? d * d : std::numeric_limits<double>::infinity();
    EXPECT_EQ(quantization_error(&v, 1, GroupKind::kFloat16, 16), expected) << v;
  }
}

TEST(Quant, BatchedErrorsEqualSingleCalls) {
  const GroupKind kinds[] = {GroupKind::kDropped, GroupKind::kInt, GroupKind::kInt, GroupKind::kIntAffine,
                             GroupKind::kIntAffine, GroupKind::kFloat16};
  const uint8_t widths[] = {0, 1, 5, 1, 8, 16};
  for (int n : {1, 2, 3, 5, 8, 13, 64, 300}) {
    const auto x = gaussian(n, uint64_t(n), 1.7f, 0.2f);
    double out[6];
    quantization_errors(x.data(), n, 6, kinds, widths, out);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], quantization_error(x.data(), n, kinds[i], widths[i])) << n << " " << i;
  }
}

TEST(Quant, DequantizeValueMatchesDequantizeToken) {
  for (GroupKind kind : kCodedKinds) {
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      const auto x = gaussian(200, uint64_t(w), 0.7f, 0.3f);
      std::vector<float> y;
      TokenQuantParams p;
      round_trip(x, kind, w, &y, &p);
      std::vector<uint8_t> codes(200);
      quantize_token(x.data(), 200, kind, w, codes.data());
      const float scale = f16_to_f32(p.scale_f16), shift = f16_to_f32(p.shift_f16);
      for (int i = 0; i < 200; ++i) {
        const float v = dequantize_value(codes[size_t(i)], kind, w, scale, shift);
        EXPECT_EQ(std::memcmp(&v, &y[size_t(i)], 4), 0) << i;
      }
      // Every code, not only those used here.
      std::vector<uint8_t> all(size_t(1) << w);
      for (size_t c = 0; c < all.size(); ++c) all[c] = uint8_t(c);
      std::vector<float> out(all.size());
      dequantize_token(all.data(), int(all.size()), kind, w, p, out.data());
      for (size_t c = 0; c < all.size(); ++c) EXPECT_EQ(dequantize_value(uint8_t(c), kind, w, scale, shift), out[c]);
    }
  }
}

TEST(Quant, ParametersAreStoredFp16Values) {
  const auto x = gaussian(64, 3, 5.0f, 2.0f);
  for (GroupKind kind : kCodedKinds) {
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      std::vector<uint8_t> codes(64);
      const TokenQuantParams p = quantize_token(x.data(), 64, kind, w, codes.data());
      const float scale = f16_to_f32(p.scale_f16);
      EXPECT_TRUE(std::isfinite(scale));
      EXPECT_GT(scale, 0.0f);
      if (kind == GroupKind::kInt) {
        EXPECT_EQ(p.shift_f16, 0);
      }
      EXPECT_TRUE(std::isfinite(f16_to_f32(p.shift_f16)));
    }
  }
}

// Values inside the quantiser's range are off by at most half a step (plus float rounding).
TEST(Quant, InRangeErrorAtMostHalfStep) {
  for (GroupKind kind : kCodedKinds) {
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      for (uint64_t seed = 0; seed < 20; ++seed) {
        const auto x = gaussian(48, seed * 31 + uint64_t(w), 1.0f + float(seed), kind == GroupKind::kIntAffine ? -3.0f : 0.0f);
        std::vector<float> y;
        TokenQuantParams p;
        round_trip(x, kind, w, &y, &p);
        const float scale = f16_to_f32(p.scale_f16), shift = f16_to_f32(p.shift_f16);
        const float lo = dequantize_value(0, kind, w, scale, shift);
        const float hi = dequantize_value(uint8_t((1 << w) - 1), kind, w, scale, shift);
        int n_in_range = 0;
        for (size_t i = 0; i < x.size(); ++i) {
          if (x[i] < lo || x[i] > hi) {
            // Clipped values land on the nearest end level.
            EXPECT_EQ(y[i], x[i] < lo ? lo : hi);
            continue;
          }
          ++n_in_range;
          EXPECT_LE(std::fabs(x[i] - y[i]), 0.5f * scale * (1.0f + 1e-5f) + 1e-6f * std::fabs(x[i]))
              << "kind " << int(kind) << " w " << w << " x " << x[i];
        }
        EXPECT_GT(n_in_range, 0);
      }
    }
  }
}

TEST(Quant, ErrorDecreasesWithWidthOnGaussianData) {
  for (GroupKind kind : kCodedKinds) {
    double total_prev = 0.0;
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      double total = 0.0;
      for (uint64_t seed = 0; seed < 50; ++seed) {
        const auto x = gaussian(64, 1000 + seed);
        total += quantization_error(x.data(), 64, kind, w);
      }
      if (w > 1) {
        // Each extra bit should roughly quarter the error (6 dB/bit); demand at least 2.5x.
        EXPECT_LT(total * 2.5, total_prev) << "kind " << int(kind) << " width " << w;
      }
      total_prev = total;
    }
  }
}

// The clip search beats a plain min/max quantiser on heavy-tailed data (what it is there for).
TEST(Quant, ClippingHelpsOnHeavyTails) {
  std::mt19937_64 rng(5);
  std::student_t_distribution<float> t(2.0f);
  double ours = 0.0, minmax = 0.0;
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<float> x(256);
    for (auto& v : x) v = t(rng);
    ours += quantization_error(x.data(), 256, GroupKind::kInt, 4);
    float amax = 0.0f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    const float step = round_to_f16(amax / 7.5f);
    for (float v : x) {
      const float q = std::clamp(std::floor(v / step + 8.0f), 0.0f, 15.0f);
      const double d = double(v) - double((q - 7.5f) * step);
      minmax += d * d;
    }
  }
  EXPECT_LT(ours, 0.8 * minmax);
}

TEST(Quant, AllZeroInput) {
  const std::vector<float> x(32, 0.0f);
  for (GroupKind kind : kCodedKinds) {
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      std::vector<float> y;
      EXPECT_EQ(round_trip(x, kind, w, &y), 0.0);
      for (float v : y) EXPECT_EQ(v, 0.0f);
      EXPECT_EQ(quantization_error(x.data(), 32, kind, w), 0.0);
    }
  }
}

TEST(Quant, ConstantInput) {
  for (float c : {1.0f, -3.25f, 1000.0f, 0.1f}) {
    const std::vector<float> x(40, c);
    for (GroupKind kind : kCodedKinds) {
      for (int w = 1; w <= kMaxWidthBits; ++w) {
        std::vector<float> y;
        const double err = round_trip(x, kind, w, &y);
        // Only the fp16 rounding of the parameters remains.
        EXPECT_LE(err, 40.0 * double(c) * c * 1e-5) << "c " << c << " kind " << int(kind) << " w " << w;
      }
    }
  }
}

TEST(Quant, HugeAndTinyInputsStayFinite) {
  for (float mag : {1e6f, 1e30f, 1e-6f, 1e-30f}) {
    auto x = gaussian(64, 11, mag);
    for (GroupKind kind : kCodedKinds) {
      for (int w = 1; w <= kMaxWidthBits; ++w) {
        std::vector<float> y;
        TokenQuantParams p;
        const double err = round_trip(x, kind, w, &y, &p);
        EXPECT_TRUE(std::isfinite(f16_to_f32(p.scale_f16)));
        EXPECT_TRUE(std::isfinite(f16_to_f32(p.shift_f16)));
        for (float v : y) EXPECT_TRUE(std::isfinite(v));
        EXPECT_TRUE(std::isfinite(err));
        double energy = 0.0;
        for (float v : x) energy += double(v) * v;
        if (mag < 1e3f) {
          // Tiny values may all round to the nearest level (zero), but never worse than dropping them
          // by more than the fp16 step floor allows.
          EXPECT_LE(err, energy * 4.0 + 64.0 * 1e-14);
        }
        EXPECT_NEAR(quantization_error(x.data(), 64, kind, w), err, 1e-9 * (1.0 + err));
      }
    }
  }
}

TEST(Quant, NonFiniteInputDoesNotBreakCodes) {
  std::vector<float> x = gaussian(16, 2);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[7] = std::numeric_limits<float>::infinity();
  for (GroupKind kind : kCodedKinds) {
    for (int w = 1; w <= kMaxWidthBits; ++w) {
      std::vector<uint8_t> codes(16);
      const TokenQuantParams p = quantize_token(x.data(), 16, kind, w, codes.data());
      for (uint8_t c : codes) EXPECT_LE(int(c), (1 << w) - 1);
      EXPECT_FALSE(std::isnan(f16_to_f32(p.scale_f16)));
    }
  }
}

TEST(Quant, Deterministic) {
  const auto x = gaussian(128, 99, 1.5f, 0.5f);
  for (GroupKind kind : kCodedKinds) {
    std::vector<uint8_t> a(128), b(128);
    const TokenQuantParams pa = quantize_token(x.data(), 128, kind, 3, a.data());
    const TokenQuantParams pb = quantize_token(x.data(), 128, kind, 3, b.data());
    EXPECT_EQ(a, b);
    EXPECT_EQ(pa.scale_f16, pb.scale_f16);
    EXPECT_EQ(pa.shift_f16, pb.shift_f16);
  }
}

}  // namespace
}  // namespace kvtc
