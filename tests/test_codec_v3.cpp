// Codec 3 (ECSQ + rANS, container format 3) end to end on real caches: the target ratio holds for the
// stored bytes, error falls as the ratio falls, layer restore and whole decode agree, chunks are
// rANS-coded, and a calibration without ECSQ tables is refused with a message that says what to do.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "core/ecsq.hpp"
#include "core/ecsq_inspect.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

const Calibration& calibration() {
  static const Calibration cal(std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq()));
  return cal;
}

class CodecV3AtRatio : public ::testing::TestWithParam<double> {};

TEST_P(CodecV3AtRatio, StoredBytesMeetTheTargetAndDecodeMatchesTheReport) {
  const double ratio = GetParam();
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = ratio;
  auto enc = encode(calibration(), cache, o);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  const EncodeReport& r = enc->report;
  // The target bounds each stream's stored bytes: the two together as well.
  EXPECT_GE(r.ratio_compressed_tokens, ratio);
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->header.format_version, 3u);
  int64_t rans_chunks = 0;
  for (int s = 0; s < 2; ++s) {
    const StreamAllocation& a = parsed->header.streams[s];
    EXPECT_TRUE(a.ecsq());
    uint64_t stored = 0;
    for (const ChunkEntry& c : parsed->header.chunks)
      if (c.stream == s && c.kind == ChunkKind::kCodes) {
        EXPECT_EQ(c.coder, ChunkCoder::kEcsqRans);
        stored += c.stored_bytes;
        ++rans_chunks;
      }
    const double budget = 2.0 * double(cache.shape.n_features()) * double(r.n_compressed_tokens) / ratio;
    EXPECT_LE(double(stored), budget) << s;
    // Rate control takes the finest level that fits (levels are 2% apart in predicted rate): not far
    // below the budget, unless the finest level itself fits (a small basis cannot spend more).
    if (a.ecsq_level > 0) {
      EXPECT_GT(double(stored), budget / 1.25) << s;
    }
  }
  EXPECT_GT(rans_chunks, 0);

  auto dec = decode(calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok()) << dec.status().to_string();
  const int64_t t0 = 4, t1 = cache.n_tokens - 128;
  EXPECT_NEAR(testing::squared_error(cache, *dec, true, t0, t1).relative(), r.k_relative_mse, 1e-9 + 1e-6 * r.k_relative_mse);
  EXPECT_NEAR(testing::squared_error(cache, *dec, false, t0, t1).relative(), r.v_relative_mse, 1e-9 + 1e-6 * r.v_relative_mse);
  EXPECT_LT(r.k_relative_mse, 0.25);
  EXPECT_LT(r.v_relative_mse, 0.35);
  // Exact tokens bit for bit.
  for (int l = 0; l < cache.shape.n_layers; ++l)
    for (int h = 0; h < cache.shape.n_kv_heads; ++h)
      for (int64_t t : {int64_t(0), int64_t(3), t1, cache.n_tokens - 1})
        for (int d = 0; d < cache.shape.head_dim; ++d) {
          ASSERT_EQ(cache.k_row(l, h, t)[d], dec->k_row(l, h, t)[d]);
          ASSERT_EQ(cache.v_row(l, h, t)[d], dec->v_row(l, h, t)[d]);
        }
}

INSTANTIATE_TEST_SUITE_P(Ratios, CodecV3AtRatio, ::testing::Values(4.0, 8.0, 16.0, 20.0, 32.0, 64.0));

// ecsq_container_rans_chunks (what the GPU encoder's tests and bench take as real codes): every codes
// chunk's symbols, coded again by the CPU's rANS encoder with the runs it gives, are the stored bytes.
TEST(CodecV3, CodesChunksDecodeToSymbolsThatCodeBackToTheirBytes) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  for (int lanes : {7, 32, 64}) {
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = 16;
    o.rans_lanes = lanes;
    auto enc = encode(calibration(), cache, o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    EXPECT_EQ(testing::expect_codes_chunks_reencode(calibration().data(), enc->bytes, lanes), 0) << lanes << " lanes";
  }
  // A flipped bit in a lane state: the symbols no longer decode to the final state, CORRUPT.
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = 16;
  auto enc = encode(calibration(), cache, o);
  ASSERT_TRUE(enc.is_ok());
  auto chunks = ecsq_container_rans_chunks(calibration().data(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(chunks.is_ok());
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(parsed.is_ok());
  const ChunkEntry& first = parsed->header.chunks[chunks->front().chunk_index];
  std::vector<uint8_t> bad = enc->bytes;
  bad[parsed->payload_offset + first.offset + kRansChunkHeaderBytes + 1] ^= 0x40;
  EXPECT_EQ(ecsq_container_rans_chunks(calibration().data(), bad.data(), bad.size()).status().code(), StatusCode::kCorrupt);
}

TEST(CodecV3, ErrorFallsAsTheRatioFalls) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  double last_k = 1e9, last_v = 1e9;
  for (double ratio : {64.0, 32.0, 16.0, 8.0}) {
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = ratio;
    auto enc = encode(calibration(), cache, o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    EXPECT_LT(enc->report.k_relative_mse, last_k) << ratio;
    EXPECT_LT(enc->report.v_relative_mse, last_v) << ratio;
    last_k = enc->report.k_relative_mse;
    last_v = enc->report.v_relative_mse;
  }
}

TEST(CodecV3, LayerRestoreEqualsWholeDecode) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = 20;
  auto enc = encode(calibration(), cache, o);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  auto whole = decode(calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(whole.is_ok());
  auto dec = Decoder::open(calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok()) << dec.status().to_string();
  for (int l = 0; l < cache.shape.n_layers; ++l) {
    std::vector<float> k, v;
    ASSERT_TRUE(dec->restore_layer(l, &k, &v).is_ok());
    EXPECT_EQ(k, whole->k[size_t(l)]) << l;
    EXPECT_EQ(v, whole->v[size_t(l)]) << l;
  }
}

TEST(CodecV3, BlockModeKeepsTruePositionsAndNoExactTokens) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  // Tokens [64, 128) as a block: position_offset 64, nothing exact.
  const CacheView view = testing::block_view(cache, 64, 128);
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = 16;
  o.exact_head_tokens = 0;
  o.exact_tail_tokens = 0;
  auto enc = encode(calibration(), view, o);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  EXPECT_EQ(enc->report.n_compressed_tokens, 64);
  EXPECT_GE(enc->report.ratio_compressed_tokens, 16.0);
  auto dec = decode(calibration(), enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(dec.is_ok()) << dec.status().to_string();
  EXPECT_EQ(dec->position_offset, 64);
  EXPECT_LT(enc->report.k_relative_mse, 0.25);
}

TEST(CodecV3, CalibrationWithoutEcsqTablesIsRefusedWithAWayOut) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  auto data = std::make_shared<CalibrationData>(calibration().data());
  data->key.ecsq = EcsqModel{};
  EncodeOptions o;
  o.codec = 3;
  auto enc = encode(Calibration(data), cache, o);
  ASSERT_FALSE(enc.is_ok());
  EXPECT_EQ(enc.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(enc.status().message().find("recalibrate"), std::string::npos) << enc.status().message();
  // A codec 3 container with such a calibration: MISMATCH, not garbage.
  o.target_ratio = 20;
  auto good = encode(calibration(), cache, o);
  ASSERT_TRUE(good.is_ok());
  auto dec = decode(Calibration(data), good->bytes.data(), good->bytes.size());
  ASSERT_FALSE(dec.is_ok());
  EXPECT_EQ(dec.status().code(), StatusCode::kMismatch);
}

TEST(CodecV3, CodecTwoStillWritesFormatTwo) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  auto enc = encode(calibration(), cache, EncodeOptions{});
  ASSERT_TRUE(enc.is_ok());
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(parsed.is_ok());
  EXPECT_EQ(parsed->header.format_version, 2u);
}

}  // namespace
}  // namespace kvtc
