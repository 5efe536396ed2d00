// Encoding from caller memory (CacheView) and restoring into it (Decoder::restore_layer_into): the same
// bytes as from a KVCache whatever the element type and strides, and block mode (a token range at its
// true positions, no exact window) against the reference decoder.
#include <gtest/gtest.h>

#include <cstring>

#include "core/reference_decoder.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

ModelShape small_shape() {
  ModelShape s;
  s.n_layers = 3;
  s.n_kv_heads = 2;
  s.head_dim = 16;
  s.rope.theta = 10000;
  return s;
}

const Calibration& calibration() {
  static const Calibration cal = [] {
    CalibrateOptions o;
    o.ratios = {8};
    o.group_sizes = {1, 4, 16};
    o.n_window_tokens = 32;
    auto b = CalibrationBuilder::create(small_shape(), "view-test", o);
    EXPECT_TRUE(b.is_ok());
    EXPECT_TRUE(b->add(testing::synthetic_cache(small_shape(), 700, 5)).is_ok());
    auto c = b->finish();
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    return c.value();
  }();
  return cal;
}

// The cache's elements stored token-major ([token][head][dim]) in `dtype`, and a view of them.
struct TokenMajor {
  std::vector<std::vector<uint8_t>> k, v;
  CacheView view;
};

TokenMajor token_major(const KVCache& c, DType dtype) {
  TokenMajor t;
  const int H = c.shape.n_kv_heads, D = c.shape.head_dim, eb = dtype_size_bytes(dtype);
  t.view.shape = c.shape;
  t.view.element_dtype = dtype;
  t.view.dtype = c.dtype;
  t.view.n_tokens = c.n_tokens;
  t.view.position_offset = c.position_offset;
  t.view.model_name = c.model_name;
  t.view.metadata = c.metadata;
  for (int l = 0; l < c.shape.n_layers; ++l) {
    for (int s = 0; s < 2; ++s) {
      auto& buf = (s == 0 ? t.k : t.v).emplace_back(size_t(c.n_tokens) * H * D * eb);
      for (int h = 0; h < H; ++h)
        for (int64_t tok = 0; tok < c.n_tokens; ++tok) {
          const float* row = s == 0 ? c.k_row(l, h, tok) : c.v_row(l, h, tok);
          uint8_t* dst = buf.data() + ((tok * H + h) * D) * eb;
          for (int i = 0; i < D; ++i) {
            if (dtype == DType::kF32) {
              std::memcpy(dst + i * 4, &row[i], 4);
            } else {
              const uint16_t bits = dtype == DType::kBF16 ? f32_to_bf16(row[i]) : f32_to_f16(row[i]);
              std::memcpy(dst + i * 2, &bits, 2);
            }
          }
        }
    }
  }
  for (int l = 0; l < c.shape.n_layers; ++l) {
    t.view.k.push_back({t.k[size_t(l)].data(), D, int64_t(H) * D});
    t.view.v.push_back({t.v[size_t(l)].data(), D, int64_t(H) * D});
  }
  return t;
}

class ViewDtype : public ::testing::TestWithParam<DType> {};

TEST_P(ViewDtype, TokenMajorViewGivesTheCacheBytes) {
  const DType dtype = GetParam();
  // Values representable in `dtype`, so the fp32 KVCache and the 16-bit view hold the same numbers.
  const KVCache cache = testing::synthetic_cache(small_shape(), 300, 9, dtype, 17);
  EncodeOptions o;
  o.target_ratio = 8;
  auto from_cache = encode(calibration(), cache, o);
  ASSERT_TRUE(from_cache.is_ok()) << from_cache.status().to_string();
  const TokenMajor tm = token_major(cache, dtype);
  auto from_view = encode(calibration(), tm.view, o);
  ASSERT_TRUE(from_view.is_ok()) << from_view.status().to_string();
  EXPECT_EQ(from_view->bytes, from_cache->bytes);
  EXPECT_DOUBLE_EQ(from_view->report.k_relative_mse, from_cache->report.k_relative_mse);
  EXPECT_EQ(from_view->report.layers[0].attention_relative_error, -1.0);  // a view carries no queries
}

TEST_P(ViewDtype, RestoreIntoStridedOutputs) {
  const DType dtype = GetParam();
  const KVCache cache = testing::synthetic_cache(small_shape(), 300, 9, DType::kF32, 0);
  auto enc = encode(calibration(), cache, {.target_ratio = 8});
  ASSERT_TRUE(enc.is_ok());
  auto dec = Decoder::open(calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok());
  const int H = 2, D = 16;
  const int64_t T = 300;
  const int eb = dtype_size_bytes(dtype);
  for (int l = 0; l < 3; ++l) {
    std::vector<float> k, v;
    ASSERT_TRUE(dec->restore_layer(l, &k, &v).is_ok());
    // Token-major outputs with a gap between tokens.
    const int64_t token_stride = int64_t(H) * D + 8;
    std::vector<uint8_t> ko(size_t(T * token_stride * eb), 0xAB), vo(ko.size(), 0xAB);
    ASSERT_TRUE(dec->restore_layer_into(l, {ko.data(), D, token_stride}, {vo.data(), D, token_stride}, dtype).is_ok());
    for (int h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int i = 0; i < D; ++i) {
          const float want = k[size_t((h * T + t) * D + i)];
          const uint8_t* p = ko.data() + ((t * token_stride + h * D + i) * eb);
          float got;
          if (dtype == DType::kF32) {
            std::memcpy(&got, p, 4);
            ASSERT_EQ(got, want);
          } else {
            uint16_t bits;
            std::memcpy(&bits, p, 2);
            ASSERT_EQ(bits, dtype == DType::kBF16 ? f32_to_bf16(want) : f32_to_f16(want));
          }
        }
    // The gaps are untouched.
    EXPECT_EQ(ko[size_t((H * D) * eb)], 0xAB);
  }
  // Overlapping rows are refused.
  std::vector<float> small(size_t(T * D));
  auto bad = dec->restore_layer_into(0, {small.data(), 0, D}, {small.data(), 0, D}, DType::kF32);
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ViewDtype, ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(BlockMode, BlocksRestoreTheirTokensAtTheirPositions) {
  const KVCache cache = testing::synthetic_cache(small_shape(), 320, 21);
  const Calibration& cal = calibration();
  KVCache restored = cache;
  for (int64_t a : {0, 64, 192}) {
    const int64_t b = a == 192 ? 320 : a + (a == 0 ? 64 : 128);
    EncodeOptions o;
    o.target_ratio = 8;
    o.exact_head_tokens = a == 0 ? -1 : 0;
    o.exact_tail_tokens = 0;
    auto enc = encode(cal, testing::block_view(cache, a, b), o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    EXPECT_EQ(enc->report.n_exact_tokens, a == 0 ? cal.n_sink_tokens() : 0);
    EXPECT_GE(enc->report.ratio_nominal, 8.0);
    // The reference decoder (the spec read aloud) agrees with the fast one on block containers.
    auto fast = decode(cal, enc->bytes.data(), enc->bytes.size());
    ASSERT_TRUE(fast.is_ok()) << fast.status().to_string();
    EXPECT_EQ(fast->position_offset, a);
    auto ref = reference_decode(cal.data(), enc->bytes.data(), enc->bytes.size());
    ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
    for (int l = 0; l < 3; ++l)
      for (size_t i = 0; i < fast->k[size_t(l)].size(); ++i) {
        ASSERT_NEAR(fast->k[size_t(l)][i], ref->k[size_t(l)][i], 1e-4f);
        ASSERT_NEAR(fast->v[size_t(l)][i], ref->v[size_t(l)][i], 1e-4f);
      }
    for (int l = 0; l < 3; ++l)
      for (int h = 0; h < 2; ++h)
        for (int64_t t = a; t < b; ++t) {
          std::memcpy(restored.k_row(l, h, t), fast->k_row(l, h, t - a), sizeof(float) * 16);
          std::memcpy(restored.v_row(l, h, t), fast->v_row(l, h, t - a), sizeof(float) * 16);
        }
  }
  // Keys carry RoPE at their true positions: the blocks' error is of the order of one whole encode's.
  EncodeOptions whole;
  whole.target_ratio = 8;
  whole.exact_tail_tokens = 0;
  auto w = encode(cal, cache, whole);
  ASSERT_TRUE(w.is_ok());
  double num = 0, den = 0;
  for (int l = 0; l < 3; ++l)
    for (size_t i = 0; i < cache.k[size_t(l)].size(); ++i) {
      const double d = double(restored.k[size_t(l)][i]) - cache.k[size_t(l)][i];
      num += d * d;
      den += double(cache.k[size_t(l)][i]) * cache.k[size_t(l)][i];
    }
  EXPECT_LT(num / den, 2.0 * w->report.k_relative_mse + 1e-9);
  // Sinks of the first block are exact.
  EXPECT_EQ(std::memcmp(restored.k_row(1, 1, 0), cache.k_row(1, 1, 0), sizeof(float) * 16), 0);
}

TEST(CacheViewValidate, RejectsWhatItCannotRead) {
  const KVCache cache = testing::synthetic_cache(small_shape(), 40, 3);
  CacheView v = CacheView::of(cache);
  EXPECT_TRUE(v.validate().is_ok());
  CacheView missing = v;
  missing.k.pop_back();
  EXPECT_EQ(missing.validate().code(), StatusCode::kInvalidArgument);
  CacheView null_data = v;
  null_data.v[1].data = nullptr;
  EXPECT_EQ(null_data.validate().code(), StatusCode::kInvalidArgument);
  CacheView negative = v;
  negative.k[0].token_stride = -16;
  EXPECT_EQ(negative.validate().code(), StatusCode::kInvalidArgument);
  CacheView other = v;
  other.shape.n_kv_heads = 1;
  other.k.resize(3);
  auto r = encode(calibration(), other, {});
  EXPECT_EQ(r.status().code(), StatusCode::kMismatch);
  auto copied = copy_cache(v);
  ASSERT_TRUE(copied.is_ok());
  EXPECT_EQ(copied->k, cache.k);
}

}  // namespace
}  // namespace kvtc
