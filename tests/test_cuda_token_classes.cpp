// Token classes (container format 4, docs/FORMAT.md section 10) on the GPU: the fused rANS decode +
// dequantise kernel reading a chunk's runs (class-1 tokens at the high level, then class-0 tokens)
// against the CPU decoder (coefficients bit for bit) and the reference decoder, on a real cache with
// SnapKV importance from its own queries and on outlier caches (escapes, bucket bits) with small
// blocks (chunks without class-1 tokens); corrupt class maps refused like the CPU's; format 3 and 4
// containers in one batch.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>
#include <memory>
#include <random>
#include <vector>

#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

using testing::check_container;

const KVCache& small_test() { return testing::repo_cache("small-test.safetensors"); }

std::vector<uint8_t> encode4(const CalibrationData& cal, const KVCache& cache, double ratio, int lanes,
                             const std::vector<float>& importance, double fraction = 0.25, int levels = 32,
                             int chunk_tokens = 256) {
  EncodeOptions eo;
  eo.codec = 3;
  eo.target_ratio = ratio;
  eo.rans_lanes = lanes;
  eo.measure_error = false;
  eo.chunk_tokens = chunk_tokens;
  eo.token_importance = importance;
  eo.high_rate_fraction = fraction;
  eo.high_rate_levels = levels;
  auto enc = make_cpu_backend()->encode(cal, cache, eo, nullptr);
  EXPECT_TRUE(enc.is_ok()) << enc.status().to_string();
  if (!enc.is_ok()) return {};
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  EXPECT_TRUE(parsed.is_ok() && parsed->header.format_version == 4u);
  return enc->bytes;
}

std::vector<float> snapkv_importance(const KVCache& cache) {
  auto imp = attention_importance(cache, 4, cache.n_tokens - 128);
  EXPECT_TRUE(imp.is_ok()) << imp.status().to_string();
  return imp.is_ok() ? *imp : std::vector<float>();
}

TEST(CudaTokenClasses, RealCacheMatchesCpuAndReference) {
  SKIP_WITHOUT_DEVICE();
  const CalibrationData& cal = testing::small_calibration_with_ecsq();
  const std::vector<float> imp = snapkv_importance(small_test());
  for (double ratio : {8.0, 16.0, 32.0, 64.0}) {
    SCOPED_TRACE("ratio " + std::to_string(ratio));
    check_container(cal, encode4(cal, small_test(), ratio, 32, imp));
  }
  for (int lanes : {1, 7, 64}) {
    SCOPED_TRACE("lanes " + std::to_string(lanes));
    check_container(cal, encode4(cal, small_test(), 16.0, lanes, imp, 0.5, 8, 48));
  }
}

// Outliers force escapes and bucket bits; 16-token blocks with a tenth of the tokens favoured leave
// many chunks with no class-1 token (runs omitted) and some with nothing but them.
TEST(CudaTokenClasses, EscapesBucketsAndSmallBlocks) {
  SKIP_WITHOUT_DEVICE();
  for (uint64_t seed : {3u, 4u}) {
    const testing::OutlierCase s = testing::outlier_case(200, seed);
    std::mt19937_64 rng(seed);
    std::vector<float> imp(size_t(s.cache.n_tokens));
    for (float& x : imp) x = float(rng() % 1000);
    for (double ratio : {4.0, 16.0, 64.0})
      for (double fraction : {0.1, 0.9}) {
        SCOPED_TRACE("seed " + std::to_string(seed) + " ratio " + std::to_string(ratio) + " fraction " +
                     std::to_string(fraction));
        check_container(s.cal, encode4(s.cal, s.cache, ratio, 32, imp, fraction, 32, 16));
      }
  }
}

// A class map that is flipped (checksums off) or fails its checksum is refused by the GPU path exactly
// when the CPU refuses it; when both accept, the coefficients agree.
TEST(CudaTokenClasses, CorruptClassMapsLikeCpu) {
  SKIP_WITHOUT_DEVICE();
  const testing::OutlierCase s = testing::outlier_case(200, 5);
  std::vector<float> imp(size_t(s.cache.n_tokens));
  for (size_t t = 0; t < imp.size(); ++t) imp[t] = float((t * 37) % 101);
  const std::vector<uint8_t> bytes = encode4(s.cal, s.cache, 16.0, 32, imp, 0.25, 32, 64);
  auto parsed = parse_container(bytes.data(), bytes.size());
  ASSERT_TRUE(parsed.is_ok());
  uint64_t begin = 0, size = 0;
  for (const ChunkEntry& c : parsed->header.chunks)
    if (c.kind == ChunkKind::kClasses) std::tie(begin, size) = std::pair{parsed->payload_offset + c.offset, uint64_t(c.stored_bytes)};
  ASSERT_GT(size, 0u);
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  for (uint64_t bit = 0; bit < size * 8; ++bit) {
    std::vector<uint8_t> bad = bytes;
    bad[begin + bit / 8] ^= uint8_t(1u << (bit % 8));
    auto g1 = gpu->decode_coefficients(s.cal, bad.data(), bad.size(), DecodeOptions{}, nullptr);
    ASSERT_FALSE(g1.is_ok());
    EXPECT_EQ(g1.status().code(), StatusCode::kChecksumMismatch) << g1.status().to_string();
    DecodeOptions without_crc;
    without_crc.verify_checksums = false;
    auto c2 = cpu->decode_coefficients(s.cal, bad.data(), bad.size(), without_crc, nullptr);
    auto g2 = gpu->decode_coefficients(s.cal, bad.data(), bad.size(), without_crc, nullptr);
    ASSERT_EQ(c2.is_ok(), g2.is_ok()) << "bit " << bit << ": CPU " << c2.status().to_string() << ", GPU "
                                      << g2.status().to_string();
    if (c2.is_ok()) {
      for (int st = 0; st < 2; ++st) EXPECT_EQ(c2->coef[st], g2->coef[st]);
    }
  }
}

// The public batch API with format 3 and format 4 containers of one calibration in one decode.
TEST(CudaTokenClasses, MixedBatchWithFormatThree) {
  SKIP_WITHOUT_DEVICE();
  const auto cal_data = std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq());
  const Calibration cal(cal_data);
  const std::vector<float> imp = snapkv_importance(small_test());
  std::vector<std::vector<uint8_t>> blobs;
  blobs.push_back(encode4(*cal_data, small_test(), 16.0, 32, imp));
  {
    EncodeOptions eo;
    eo.codec = 3;
    eo.target_ratio = 20.0;
    eo.measure_error = false;
    auto enc = make_cpu_backend()->encode(*cal_data, small_test(), eo, nullptr);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    blobs.push_back(enc->bytes);
  }
  blobs.push_back(encode4(*cal_data, small_test(), 32.0, 16, imp, 0.5, 16));
  testing::expect_batch_decode_matches_cpu(cal, blobs);
}

}  // namespace
}  // namespace kvtc
