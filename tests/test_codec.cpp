// The CPU codec end to end on real caches: honest ratios, exact tokens bit for bit, the fast decoder
// against the reference decoder, plain-zlib chunks, layer-by-layer restore, and calibration mismatch.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <memory>

#include "core/reference_decoder.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

using testing::repo_data;

const Calibration& small_calibration() {
  static const Calibration cal(std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq()));
  return cal;
}

const KVCache& small_test_cache() {
  static const KVCache cache = [] {
    auto c = read_cache(repo_data("small-test.safetensors"));
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    return c.value();
  }();
  return cache;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, double(std::fabs(x)));
  return m;
}

class CodecAtRatio : public ::testing::TestWithParam<double> {};

TEST_P(CodecAtRatio, TargetIsHonestAndFastDecoderMatchesReference) {
  const double ratio = GetParam();
  const Calibration& cal = small_calibration();
  const KVCache& cache = small_test_cache();
  EncodeOptions o;
  o.target_ratio = ratio;
  auto enc = encode(cal, cache, o);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  const EncodeReport& r = enc->report;
  EXPECT_EQ(r.n_compressed_tokens, cache.n_tokens - 4 - 128);
  // A target of CR gives at least CR x before entropy coding, and DEFLATE never makes it worse.
  EXPECT_GE(r.ratio_nominal, ratio);
  EXPECT_GE(r.ratio_compressed_tokens, r.ratio_nominal * 0.999);
  EXPECT_LT(r.k_relative_mse, 0.2);
  EXPECT_LT(r.v_relative_mse, 0.3);

  auto fast = decode(cal, enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(fast.is_ok()) << fast.status().to_string();
  auto ref = reference_decode(cal.data(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  for (int l = 0; l < cache.shape.n_layers; ++l) {
    // Summation order differs (sgemm vs double loop): agree to fp32 rounding of the magnitudes.
    EXPECT_LE(max_abs_diff(fast->k[l], ref->k[l]), 2e-4 * max_abs(ref->k[l])) << "layer " << l;
    EXPECT_LE(max_abs_diff(fast->v[l], ref->v[l]), 2e-4 * max_abs(ref->v[l])) << "layer " << l;
  }
  // Measured error equals what the report claims.
  const double k_rel = testing::squared_error(cache, *fast, true, 4, cache.n_tokens - 128).relative();
  EXPECT_NEAR(k_rel, r.k_relative_mse, 1e-9 + 1e-6 * r.k_relative_mse);
}

INSTANTIATE_TEST_SUITE_P(Ratios, CodecAtRatio, ::testing::Values(8.0, 16.0, 20.0, 32.0, 12.5));

TEST(Codec, ErrorGrowsWithRatio) {
  double last_k = 0, last_v = 0;
  for (double ratio : {8.0, 16.0, 32.0}) {
    EncodeOptions o;
    o.target_ratio = ratio;
    o.measure_error = true;
    auto enc = encode(small_calibration(), small_test_cache(), o);
    ASSERT_TRUE(enc.is_ok());
    EXPECT_GT(enc->report.k_relative_mse, last_k);
    EXPECT_GT(enc->report.v_relative_mse, last_v);
    last_k = enc->report.k_relative_mse;
    last_v = enc->report.v_relative_mse;
  }
}

class ExactChunkBytes : public ::testing::TestWithParam<int64_t> {};

// Exact segments split into chunks of at most chunk_max_bytes (3000: 5 tokens of 2 x 128 bf16, an
// uneven split of 128; 16 KiB: 32 tokens; 1 MiB: one chunk per segment) restore bit for bit through
// the fast and the reference decoder.
TEST_P(ExactChunkBytes, ExactTokensRoundTripBitForBit) {
  const KVCache& cache = small_test_cache();
  EncodeOptions o;
  o.target_ratio = 32;
  o.measure_error = false;
  o.chunk_max_bytes = GetParam();
  auto enc = encode(small_calibration(), cache, o);
  ASSERT_TRUE(enc.is_ok());
  auto pc = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(pc.is_ok());
  const int64_t token_bytes = int64_t(cache.shape.n_kv_heads) * cache.shape.head_dim * 2;
  const int64_t per_chunk = std::max<int64_t>(1, GetParam() / token_bytes);
  int64_t n_exact = 0;
  for (const ChunkEntry& c : pc->header.chunks)
    if (c.kind == ChunkKind::kExact) {
      ++n_exact;
      EXPECT_LE(c.n_tokens, per_chunk);
    }
  const int64_t per_layer = (4 + per_chunk - 1) / per_chunk + (128 + per_chunk - 1) / per_chunk;
  EXPECT_EQ(n_exact, 2 * cache.shape.n_layers * per_layer);
  auto dec = decode(small_calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok());
  auto ref = reference_decode(small_calibration().data(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(ref.is_ok());
  for (int l = 0; l < cache.shape.n_layers; ++l)
    for (int h = 0; h < cache.shape.n_kv_heads; ++h)
      for (int64_t t = 0; t < cache.n_tokens; ++t) {
        if (t >= 4 && t < cache.n_tokens - 128) continue;
        for (int d = 0; d < cache.shape.head_dim; ++d) {
          ASSERT_EQ(f32_to_bf16(cache.k_row(l, h, t)[d]), f32_to_bf16(dec->k_row(l, h, t)[d]));
          ASSERT_EQ(f32_to_bf16(cache.v_row(l, h, t)[d]), f32_to_bf16(dec->v_row(l, h, t)[d]));
          ASSERT_EQ(f32_to_bf16(cache.k_row(l, h, t)[d]), f32_to_bf16(ref->k_row(l, h, t)[d]));
          ASSERT_EQ(f32_to_bf16(cache.v_row(l, h, t)[d]), f32_to_bf16(ref->v_row(l, h, t)[d]));
        }
      }
}

INSTANTIATE_TEST_SUITE_P(Sizes, ExactChunkBytes, ::testing::Values(int64_t(3000), int64_t(16 << 10), int64_t(1 << 20)));

TEST(Codec, EveryChunkInflatesWithPlainZlib) {
  EncodeOptions o;
  o.target_ratio = 20;
  o.measure_error = false;
  o.chunk_tokens = 64;  // several blocks
  auto enc = encode(small_calibration(), small_test_cache(), o);
  ASSERT_TRUE(enc.is_ok());
  auto pc = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(pc.is_ok());
  int codes = 0, side = 0, exact = 0;
  for (const ChunkEntry& c : pc->header.chunks) {
    std::vector<uint8_t> raw(c.raw_bytes + 16);
    z_stream z{};
    ASSERT_EQ(inflateInit2(&z, -15), Z_OK);
    z.next_in = const_cast<Bytef*>(enc->bytes.data() + pc->payload_offset + c.offset);
    z.avail_in = c.stored_bytes;
    z.next_out = raw.data();
    z.avail_out = uInt(raw.size());
    EXPECT_EQ(inflate(&z, Z_FINISH), Z_STREAM_END);
    EXPECT_EQ(raw.size() - z.avail_out, c.raw_bytes);
    EXPECT_EQ(z.avail_in, 0u);
    inflateEnd(&z);
    codes += c.kind == ChunkKind::kCodes;
    side += c.kind == ChunkKind::kSide;
    exact += c.kind == ChunkKind::kExact;
  }
  EXPECT_GE(codes, 2 * 6);  // (512 - 132) / 64 -> 6 blocks per stream
  EXPECT_EQ(exact, 2 * 8 * (1 + 4));  // per stream and layer: the 4 sinks, the 128-token window in 32-token chunks
  EXPECT_GT(side + codes, 0);
}

// Token blocks shrink so that side chunks fit chunk_max_bytes (side chunks are serial streams), and
// the file still decodes as the reference decoder decodes it.
TEST(Codec, SideChunksStayWithinChunkMaxBytes) {
  EncodeOptions o;
  o.target_ratio = 20;
  o.measure_error = false;
  o.chunk_max_bytes = 512;
  auto enc = encode(small_calibration(), small_test_cache(), o);
  ASSERT_TRUE(enc.is_ok());
  auto pc = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(pc.is_ok());
  int side = 0;
  for (const ChunkEntry& c : pc->header.chunks) {
    if (c.kind != ChunkKind::kSide) continue;
    ++side;
    EXPECT_LE(c.raw_bytes, 512u);
    EXPECT_LT(c.n_tokens, 256u);
  }
  EXPECT_GT(side, 2 * 2);
  auto fast = decode(small_calibration(), enc->bytes.data(), enc->bytes.size());
  auto ref = reference_decode(small_calibration().data(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(fast.is_ok());
  ASSERT_TRUE(ref.is_ok());
  for (int l = 0; l < small_test_cache().shape.n_layers; ++l) EXPECT_LE(max_abs_diff(fast->k[l], ref->k[l]), 1e-4 * max_abs(ref->k[l]));
}

TEST(Codec, LayerByLayerRestoreEqualsWholeDecode) {
  EncodeOptions o;
  o.target_ratio = 16;
  o.measure_error = false;
  auto enc = encode(small_calibration(), small_test_cache(), o);
  ASSERT_TRUE(enc.is_ok());
  auto whole = decode(small_calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(whole.is_ok());
  auto dec = Decoder::open(small_calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok());
  for (int l : {7, 0, 3}) {  // any order
    std::vector<float> k, v;
    ASSERT_TRUE(dec->restore_layer(l, &k, &v).is_ok());
    EXPECT_EQ(k, whole->k[l]);
    EXPECT_EQ(v, whole->v[l]);
  }
  std::vector<float> k, v;
  EXPECT_EQ(dec->restore_layer(8, &k, &v).code(), StatusCode::kInvalidArgument);
}

TEST(Codec, RestoredFileRoundTripsThroughSafetensors) {
  EncodeOptions o;
  o.target_ratio = 20;
  o.measure_error = false;
  auto enc = encode(small_calibration(), small_test_cache(), o);
  ASSERT_TRUE(enc.is_ok());
  auto dec = decode(small_calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok());
  const std::string path = testing::temp_dir() + "/restored.safetensors";
  ASSERT_TRUE(write_cache(*dec, path).is_ok());
  auto back = read_cache(path);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->dtype, DType::kBF16);
  EXPECT_EQ(back->n_tokens, small_test_cache().n_tokens);
  EXPECT_EQ(back->metadata.at("model"), small_test_cache().metadata.at("model"));
}

TEST(Codec, RejectsCalibrationOfAnotherModel) {
  // Same tokens, different model shape: a calibration of 4 layers cannot decode an 8-layer container.
  ModelShape other = small_test_cache().shape;
  other.n_layers = 4;
  KVCache synth = testing::synthetic_cache(other, 300, 7);
  const std::string path = testing::temp_dir() + "/other.safetensors";
  ASSERT_TRUE(write_cache(synth, path).is_ok());
  CalibrateOptions co;
  co.ratios = {20};
  auto other_cal = calibrate({path}, co);
  ASSERT_TRUE(other_cal.is_ok()) << other_cal.status().to_string();

  EncodeOptions o;
  o.measure_error = false;
  auto enc = encode(small_calibration(), small_test_cache(), o);
  ASSERT_TRUE(enc.is_ok());
  auto dec = decode(*other_cal, enc->bytes.data(), enc->bytes.size());
  EXPECT_EQ(dec.status().code(), StatusCode::kMismatch) << dec.status().to_string();
  auto wrong_cache = encode(*other_cal, small_test_cache(), o);
  EXPECT_EQ(wrong_cache.status().code(), StatusCode::kMismatch);
}

}  // namespace
}  // namespace kvtc
