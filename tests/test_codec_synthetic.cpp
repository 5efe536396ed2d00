// The codec on fresh random caches of many shapes: dtypes, RoPE styles, position offsets, caches too
// short to compress, small chunks. Fast decoder against the reference decoder every time.
#include <gtest/gtest.h>

#include <cmath>

#include "core/reference_decoder.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

struct Case {
  const char* name;
  int layers, heads, dim;
  RopeStyle style;
  DType dtype;
  int64_t tokens, position_offset;
  int chunk_tokens;
  double ratio;
};

class SyntheticCodec : public ::testing::TestWithParam<Case> {};

Calibration calibrate_in_memory(const KVCache& c, double ratio) {
  CalibrateOptions o;
  o.ratios = {ratio};
  o.group_sizes = {1, 4, 16, 64};
  auto b = CalibrationBuilder::create(c.shape, "synthetic", o);
  EXPECT_TRUE(b.is_ok()) << b.status().to_string();
  EXPECT_TRUE(b->add(c).is_ok());
  auto cal = b->finish();
  EXPECT_TRUE(cal.is_ok()) << cal.status().to_string();
  return cal.value();
}

TEST_P(SyntheticCodec, RoundTripMatchesReference) {
  const Case& tc = GetParam();
  ModelShape shape;
  shape.n_layers = tc.layers;
  shape.n_kv_heads = tc.heads;
  shape.head_dim = tc.dim;
  shape.rope.theta = 10000;
  shape.rope.style = tc.style;
  KVCache calib_cache = testing::synthetic_cache(shape, 600, 11, tc.dtype);
  const Calibration cal = calibrate_in_memory(calib_cache, tc.ratio);

  const KVCache cache = testing::synthetic_cache(shape, tc.tokens, 99, tc.dtype, tc.position_offset);
  EncodeOptions o;
  o.target_ratio = tc.ratio;
  o.chunk_tokens = tc.chunk_tokens;
  o.chunk_max_bytes = 1024;  // forces several codes chunks per block
  auto enc = encode(cal, cache, o);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  if (enc->report.n_compressed_tokens > 0) {
    EXPECT_GE(enc->report.ratio_nominal, tc.ratio);
  }
  auto fast = decode(cal, enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(fast.is_ok()) << fast.status().to_string();
  auto ref = reference_decode(cal.data(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  ASSERT_EQ(fast->n_tokens, cache.n_tokens);
  EXPECT_EQ(fast->dtype, tc.dtype);
  for (int l = 0; l < shape.n_layers; ++l) {
    double scale = 1e-6;
    for (float x : ref->k[l]) scale = std::max(scale, double(std::fabs(x)));
    for (size_t i = 0; i < ref->k[l].size(); ++i) {
      ASSERT_NEAR(fast->k[l][i], ref->k[l][i], 2e-4 * scale) << "layer " << l << " index " << i;
      ASSERT_NEAR(fast->v[l][i], ref->v[l][i], 2e-4 * scale) << "layer " << l << " index " << i;
    }
  }
  // Exact tokens are bit-exact in the file's dtype (the synthetic values are representable).
  const int64_t n_head = std::min<int64_t>(4, cache.n_tokens);
  for (int64_t t = 0; t < n_head; ++t)
    for (int d = 0; d < shape.head_dim; ++d) ASSERT_EQ(fast->k_row(0, 0, t)[d], cache.k_row(0, 0, t)[d]);
  if (enc->report.n_compressed_tokens > 0) {
    EXPECT_LT(enc->report.k_relative_mse, 0.5);
    EXPECT_LT(enc->report.v_relative_mse, 0.5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SyntheticCodec,
    ::testing::Values(Case{"bf16_half", 2, 2, 16, RopeStyle::kHalf, DType::kBF16, 400, 0, 64, 8},
                      Case{"f16_interleaved", 3, 1, 32, RopeStyle::kInterleaved, DType::kF16, 333, 0, 50, 16},
                      Case{"f32_offset", 2, 2, 16, RopeStyle::kHalf, DType::kF32, 300, 1000, 256, 20},
                      Case{"short_all_exact", 2, 2, 16, RopeStyle::kHalf, DType::kBF16, 100, 0, 64, 8},
                      Case{"just_one_compressed", 2, 2, 16, RopeStyle::kHalf, DType::kBF16, 133, 0, 64, 8},
                      Case{"tiny_chunks", 1, 2, 8, RopeStyle::kInterleaved, DType::kF32, 200, 0, 1, 4},
                      Case{"high_ratio", 2, 2, 16, RopeStyle::kHalf, DType::kBF16, 400, 0, 128, 64}),
    [](const ::testing::TestParamInfo<Case>& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace kvtc
