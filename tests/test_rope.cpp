// RoPE: the rotation matches a double-precision formula, the inverse undoes it, both pairings are the
// same rotation, Llama 3 frequencies follow Hugging Face, and the real cache survives unrope + rope.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <random>

#include "core/rope.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

constexpr int kHeadDim = 128;

std::vector<float> random_rows(int64_t n_rows, int head_dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(size_t(n_rows) * head_dim);
  for (auto& v : x) v = normal(rng);
  return x;
}

// Index of the partner feature and whether `i` is the first of its pair.
int partner(RopeStyle style, int i, int d) {
  if (style == RopeStyle::kHalf) return i < d / 2 ? i + d / 2 : i - d / 2;
  return i ^ 1;
}
int pair_index(RopeStyle style, int i, int d) { return style == RopeStyle::kHalf ? i % (d / 2) : i / 2; }
bool is_first(RopeStyle style, int i, int d) { return style == RopeStyle::kHalf ? i < d / 2 : (i % 2) == 0; }

// x' computed in double with the angle position * theta^(-2i/d), no table involved.
std::vector<double> rotate_reference(const float* x, int d, int64_t position, const RopeParams& params) {
  std::vector<double> out(d);
  for (int i = 0; i < d; ++i) {
    const int k = pair_index(params.style, i, d);
    const double angle = double(position) * std::pow(params.theta, -2.0 * k / d);
    const double c = std::cos(angle), s = std::sin(angle);
    const double xi = x[i], xp = x[partner(params.style, i, d)];
    out[i] = is_first(params.style, i, d) ? xi * c - xp * s : xp * s + xi * c;
  }
  return out;
}

double pair_norm(const float* x, RopeStyle style, int i, int d) {
  const double a = x[i], b = x[partner(style, i, d)];
  return std::sqrt(a * a + b * b);
}

class RopeStyles : public ::testing::TestWithParam<RopeStyle> {};

TEST_P(RopeStyles, MatchesDoublePrecisionFormula) {
  RopeParams params;
  params.theta = 500000.0;
  params.style = GetParam();
  for (int64_t first : {int64_t(0), int64_t(131072 - 64)}) {
    RopeTable table(params, kHeadDim, first, 64);
    std::vector<float> x = random_rows(64, kHeadDim, 1 + first);
    const std::vector<float> x0 = x;
    table.apply(x.data(), 0, 64, /*inverse=*/false);
    for (int r = 0; r < 64; ++r) {
      const float* in = &x0[size_t(r) * kHeadDim];
      const std::vector<double> ref = rotate_reference(in, kHeadDim, first + r, params);
      for (int i = 0; i < kHeadDim; ++i) {
        // cos and sin rounded to fp32 (1/2 ulp each) and three fp32 operations: a few ulp of the pair.
        const double tol = 4 * FLT_EPSILON * pair_norm(in, params.style, i, kHeadDim);
        ASSERT_NEAR(x[size_t(r) * kHeadDim + i], ref[i], tol) << "position " << first + r << " feature " << i;
      }
    }
  }
}

TEST_P(RopeStyles, InverseUndoesForwardAtLongPositions) {
  RopeParams params;
  params.theta = 10000.0;
  params.style = GetParam();
  // Rows at positions 131000.., and one table row reached through row0 to check the offset arithmetic.
  RopeTable table(params, kHeadDim, 131000, 73);
  std::vector<float> x = random_rows(72, kHeadDim, 7);
  const std::vector<float> x0 = x;
  table.apply(x.data(), 1, 72, false);
  double max_moved = 0;
  for (size_t i = 0; i < x.size(); ++i) max_moved = std::max(max_moved, double(std::fabs(x[i] - x0[i])));
  EXPECT_GT(max_moved, 1.0) << "the forward rotation did not move the rows";
  table.apply(x.data(), 1, 72, true);
  for (int r = 0; r < 72; ++r)
    for (int i = 0; i < kHeadDim; ++i) {
      const float* in = &x0[size_t(r) * kHeadDim];
      const double tol = 4 * FLT_EPSILON * pair_norm(in, params.style, i, kHeadDim);
      ASSERT_NEAR(x[size_t(r) * kHeadDim + i], in[i], tol) << "row " << r << " feature " << i;
    }
}

TEST_P(RopeStyles, RowOffsetSelectsPosition) {
  // apply(row0 = 5) on one row must equal a table that starts at that position.
  RopeParams params;
  params.style = GetParam();
  RopeTable a(params, 64, 100, 10), b(params, 64, 105, 1);
  std::vector<float> x = random_rows(1, 64, 3), y = x;
  a.apply(x.data(), 5, 1, false);
  b.apply(y.data(), 0, 1, false);
  EXPECT_EQ(x, y);
}

INSTANTIATE_TEST_SUITE_P(Both, RopeStyles, ::testing::Values(RopeStyle::kHalf, RopeStyle::kInterleaved),
                         [](const auto& param_info) { return param_info.param == RopeStyle::kHalf ? "Half" : "Interleaved"; });

TEST(Rope, InterleavedIsHalfUpToFeaturePermutation) {
  // Half pairs (i, i + d/2); interleaved pairs (2i, 2i + 1). Mapping feature i -> 2i and i + d/2 -> 2i + 1
  // turns one into the other, with the same fp32 arithmetic, hence the same bits.
  RopeParams half_params, inter_params;
  half_params.style = RopeStyle::kHalf;
  inter_params.style = RopeStyle::kInterleaved;
  const int d = 96;  // not a multiple of 16 pairs: exercises the scalar tail too
  const int64_t n = 40;
  RopeTable half(half_params, d, 977, n), inter(inter_params, d, 977, n);
  std::vector<float> x = random_rows(n, d, 11), y(x.size());
  for (int64_t r = 0; r < n; ++r)
    for (int i = 0; i < d / 2; ++i) {
      y[r * d + 2 * i] = x[r * d + i];
      y[r * d + 2 * i + 1] = x[r * d + i + d / 2];
    }
  half.apply(x.data(), 0, n, false);
  inter.apply(y.data(), 0, n, false);
  for (int64_t r = 0; r < n; ++r)
    for (int i = 0; i < d / 2; ++i) {
      ASSERT_EQ(y[r * d + 2 * i], x[r * d + i]) << r << "," << i;
      ASSERT_EQ(y[r * d + 2 * i + 1], x[r * d + i + d / 2]) << r << "," << i;
    }
}

TEST(Rope, DefaultInvFreq) {
  RopeParams p;
  p.theta = 10000.0;
  const auto f = p.inv_freq(64);
  ASSERT_EQ(f.size(), 32u);
  EXPECT_EQ(f[0], 1.0);
  EXPECT_NEAR(f[16], 0.01, 1e-15);       // 10000^(-32/64)
  EXPECT_NEAR(f[31], std::pow(10000.0, -62.0 / 64), 1e-18);
}

TEST(Rope, Llama3InvFreqMatchesHuggingFace) {
  // Llama 3.1: theta 500000, head_dim 128, factor 8, low 1, high 4, original context 8192. Expected
  // values worked out from transformers' _compute_llama3_parameters in double: wavelen = 2 pi / inv;
  // wavelen < 8192/4 keeps inv, wavelen > 8192/1 gives inv/8, between: s = (8192/wavelen - 1)/(4 - 1),
  // (1 - s) inv/8 + s inv.
  RopeParams p;
  p.theta = 500000.0;
  p.llama3_factor = 8.0;
  p.llama3_low_freq_factor = 1.0;
  p.llama3_high_freq_factor = 4.0;
  p.llama3_original_max_position = 8192.0;
  const auto f = p.inv_freq(128);
  ASSERT_EQ(f.size(), 64u);
  const std::pair<int, double> expected[] = {
      {0, 1.0},                                 // high frequency: unchanged
      {20, 0.016560440080994446},               // wavelength 379: unchanged
      {29, 0.002166570763503359},               // wavelength 2402: smoothed, s = 0.8036
      {30, 0.0013718935677611381},              // wavelength 2948: s = 0.5928
      {34, 0.0001785078127679964},              // wavelength 6695: s = 0.0745
      {35, 9.556212353964683e-05},              // wavelength 8219 > 8192: divided by 8
      {63, 3.068925988914511e-07},              // divided by 8
  };
  for (const auto& [i, v] : expected) EXPECT_NEAR(f[i], v, 1e-12 * v) << "index " << i;
  // Unscaled frequencies are untouched when llama3_factor is 0.
  p.llama3_factor = 0;
  EXPECT_NEAR(p.inv_freq(128)[63], 2.455140791131609e-06, 1e-18);
}

// Keys of the real cache are bf16 with RoPE applied. Removing and re-applying it in fp32 moves each
// element by a few fp32 ulp of its pair's norm, so every bf16 value comes back exactly unless the
// element is tiny next to its partner (below 2^-12 of the pair norm, where a few fp32 ulp of the pair can
// exceed half a bf16 ulp of the element): a handful of the 1M values, each within that fp32 bound.
TEST(Rope, RealCacheUnropeRopeIsExactInBf16) {
  auto cache = read_cache(testing::shared_kvcache("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
  const KVCache& c = cache.value();
  ASSERT_EQ(c.dtype, DType::kBF16);
  const int d = c.shape.head_dim;
  RopeTable table(c.shape.rope, d, c.position_offset, c.n_tokens);
  int64_t inexact = 0, total = 0;
  for (int l = 0; l < c.shape.n_layers; ++l)
    for (int h = 0; h < c.shape.n_kv_heads; ++h) {
      const float* k = c.k_row(l, h, 0);
      std::vector<float> x(k, k + c.n_tokens * d);
      table.apply(x.data(), 0, c.n_tokens, true);
      table.apply(x.data(), 0, c.n_tokens, false);
      for (int64_t t = 0; t < c.n_tokens; ++t)
        for (int i = 0; i < d; ++i, ++total) {
          const float orig = k[t * d + i], back = x[t * d + i];
          if (bf16_to_f32(f32_to_bf16(back)) == orig) continue;
          ++inexact;
          const double norm = pair_norm(k + t * d, RopeStyle::kHalf, i, d);
          EXPECT_LT(std::fabs(orig), std::ldexp(norm, -12)) << "layer " << l << " head " << h << " token " << t << " feature " << i;
          EXPECT_LE(std::fabs(back - orig), 4 * FLT_EPSILON * norm);
        }
    }
  EXPECT_EQ(total, int64_t(c.shape.n_layers) * c.shape.n_kv_heads * c.n_tokens * d);
  EXPECT_LE(inexact, total / 100000) << "values not restored exactly in bf16";
}

// With the right pairing, un-roped keys of a real model keep a large mean (fixed "outlier" channels
// that RoPE smears over positions). The wrong pairing, or none, leaves far less of the energy in the
// mean. This is what tells us the cache's rope_style "half" is read the way the model applied it.
TEST(Rope, RealCacheHalfStyleRecoversStableKeyChannels) {
  auto cache = read_cache(testing::shared_kvcache("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
  const KVCache& c = cache.value();
  ASSERT_EQ(c.shape.rope.style, RopeStyle::kHalf);
  auto mean_energy_fraction = [&](const RopeTable* unrope) {
    double mean_sq = 0, total_sq = 0;
    const int d = c.shape.head_dim;
    for (int l = 0; l < c.shape.n_layers; ++l)
      for (int h = 0; h < c.shape.n_kv_heads; ++h) {
        std::vector<float> x(c.k_row(l, h, 0), c.k_row(l, h, 0) + c.n_tokens * d);
        if (unrope) unrope->apply(x.data(), 0, c.n_tokens, true);
        for (int i = 0; i < d; ++i) {
          double s = 0;
          for (int64_t t = 0; t < c.n_tokens; ++t) {
            s += x[t * d + i];
            total_sq += double(x[t * d + i]) * x[t * d + i];
          }
          mean_sq += s * s / double(c.n_tokens);
        }
      }
    return mean_sq / total_sq;
  };
  RopeParams wrong = c.shape.rope;
  wrong.style = RopeStyle::kInterleaved;
  RopeTable right_table(c.shape.rope, c.shape.head_dim, 0, c.n_tokens);
  RopeTable wrong_table(wrong, c.shape.head_dim, 0, c.n_tokens);
  const double right = mean_energy_fraction(&right_table);
  const double none = mean_energy_fraction(nullptr);
  const double wrong_style = mean_energy_fraction(&wrong_table);
  // Measured on small-test: right 0.80, none 0.59, interleaved 0.30.
  EXPECT_GT(right, none + 0.1) << "right " << right << " none " << none;
  EXPECT_GT(right, 2 * wrong_style) << "right " << right << " wrong " << wrong_style;
}

}  // namespace
}  // namespace kvtc
