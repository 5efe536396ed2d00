// Codec 3 (ECSQ + rANS, format 3) on the GPU: the fused rANS decode + dequantise kernel against the
// CPU decoder (coefficients bit for bit) and the reference decoder, on a real cache and on synthetic
// caches whose outliers force escapes and bucket bits (test_util's outlier_case, which
// test_codec_v3_reference checks reaches both rules), for 1..64 rANS lanes; corrupt chunks reported like the CPU's; codec 2
// and codec 3 containers in one batch; and the GPU encoder's refusal of codec 3.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "entropy/rans_chunk.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

using testing::check_container;

const KVCache& small_test() { return testing::repo_cache("small-test.safetensors"); }

std::vector<uint8_t> encode3(const CalibrationData& cal, const KVCache& cache, double ratio, int lanes,
                             int64_t chunk_tokens = 0) {
  EncodeOptions eo;
  eo.codec = 3;
  eo.target_ratio = ratio;
  eo.rans_lanes = lanes;
  eo.measure_error = false;
  if (chunk_tokens > 0) eo.chunk_tokens = chunk_tokens;
  auto enc = make_cpu_backend()->encode(cal, cache, eo, nullptr);
  EXPECT_TRUE(enc.is_ok()) << enc.status().to_string();
  return enc.is_ok() ? enc->bytes : std::vector<uint8_t>{};
}

// A real cache of the reference model with the ECSQ models calibrate() learns, at several ratios
// and lane counts: one lane, an odd count, one warp, one more than a warp, two warps.
TEST(CudaCodec3, RealCacheMatchesCpuAndReference) {
  SKIP_WITHOUT_DEVICE();
  const CalibrationData& cal = testing::small_calibration_with_ecsq();
  for (double ratio : {8.0, 20.0, 32.0}) {
    SCOPED_TRACE("ratio " + std::to_string(ratio));
    check_container(cal, encode3(cal, small_test(), ratio, 32));
  }
  for (int lanes : {1, 7, 33, 64}) {
    SCOPED_TRACE("lanes " + std::to_string(lanes));
    check_container(cal, encode3(cal, small_test(), 16.0, lanes));
  }
}

TEST(CudaCodec3, EscapesBucketsAndBlockMode) {
  SKIP_WITHOUT_DEVICE();
  for (uint64_t seed : {3u, 4u}) {
    const testing::OutlierCase s = testing::outlier_case(200, seed);
    for (double ratio : {4.0, 8.0, 16.0, 64.0})
      for (int lanes : {32, 64}) {
        SCOPED_TRACE("seed " + std::to_string(seed) + " ratio " + std::to_string(ratio) + " lanes " + std::to_string(lanes));
        check_container(s.cal, encode3(s.cal, s.cache, ratio, lanes, 64));
      }
    // Block mode: tokens [40, 140) at their true positions, no exact tokens, the outliers inside.
    const CacheView view = testing::block_view(s.cache, 40, 140);
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = 8;
    o.exact_head_tokens = 0;
    o.exact_tail_tokens = 0;
    o.measure_error = false;
    auto enc = encode(Calibration(std::make_shared<CalibrationData>(s.cal)), view, o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    check_container(s.cal, enc->bytes);
  }
}

// Flipped bits: with checksums the GPU reports CHECKSUM_MISMATCH like the CPU; without them it fails
// exactly when the CPU decoder fails (CORRUPT), and when both succeed the coefficients agree. A
// truncated container is refused before anything runs.
TEST(CudaCodec3, FlippedBitsGiveStatusLikeCpu) {
  SKIP_WITHOUT_DEVICE();
  const testing::OutlierCase s = testing::outlier_case(200, 5);
  const std::vector<uint8_t> bytes = encode3(s.cal, s.cache, 8.0, 32, 64);
  auto parsed = parse_container(bytes.data(), bytes.size());
  ASSERT_TRUE(parsed.is_ok());
  // Flip bits only inside codes chunks: those are what the new kernel reads.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const ChunkEntry& c : parsed->header.chunks)
    if (c.coder == ChunkCoder::kEcsqRans) ranges.push_back({parsed->payload_offset + c.offset, c.stored_bytes});
  ASSERT_FALSE(ranges.empty());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  std::mt19937_64 rng(7);
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<uint8_t> bad = bytes;
    const auto& [begin, size] = ranges[rng() % ranges.size()];
    bad[begin + rng() % size] ^= uint8_t(1u << (rng() % 8));
    DecodeOptions with_crc, without_crc;
    without_crc.verify_checksums = false;
    auto g1 = gpu->decode_coefficients(s.cal, bad.data(), bad.size(), with_crc, nullptr);
    ASSERT_FALSE(g1.is_ok());
    EXPECT_EQ(g1.status().code(), StatusCode::kChecksumMismatch) << g1.status().to_string();
    auto c2 = cpu->decode_coefficients(s.cal, bad.data(), bad.size(), without_crc, nullptr);
    auto g2 = gpu->decode_coefficients(s.cal, bad.data(), bad.size(), without_crc, nullptr);
    EXPECT_EQ(c2.is_ok(), g2.is_ok()) << "trial " << trial << ": CPU " << c2.status().to_string() << ", GPU "
                                      << g2.status().to_string();
    if (c2.is_ok() && g2.is_ok()) {
      for (int st = 0; st < 2; ++st) EXPECT_EQ(c2->coef[st], g2->coef[st]);
    } else if (!g2.is_ok()) {
      EXPECT_EQ(g2.status().code(), StatusCode::kCorrupt) << g2.status().to_string();
      ++rejected;
    }
  }
  std::printf("%d of 300 containers with a flipped codes bit rejected without checksums\n", rejected);
  auto t = gpu->decode_coefficients(s.cal, bytes.data(), bytes.size() - 1, DecodeOptions{}, nullptr);
  EXPECT_EQ(t.status().code(), StatusCode::kCorrupt);
}

// The public batch API with codec 2 and codec 3 containers of one calibration in one decode, fp32
// and bf16 restores against the CPU decoder (bf16 tolerance: 1e-2 of the largest magnitude).
TEST(CudaCodec3, MixedBatchWithCodecTwo) {
  SKIP_WITHOUT_DEVICE();
  const auto cal_data = std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq());
  const Calibration cal(cal_data);
  std::vector<std::vector<uint8_t>> blobs;
  for (int codec : {3, 2, 3}) {
    EncodeOptions eo;
    eo.codec = codec;
    eo.target_ratio = codec == 2 ? 20.0 : 16.0;
    eo.measure_error = false;
    auto enc = make_cpu_backend()->encode(*cal_data, small_test(), eo, nullptr);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    blobs.push_back(enc->bytes);
  }
  testing::expect_batch_decode_matches_cpu(cal, blobs);
}

// Chunks of at most 32 rANS lanes and wider ones in one batch go to two decode kernels (one lane per
// thread, or two): every sequence still matches the CPU decoder, and a corrupt chunk of a narrow
// sequence placed between wide ones is reported under its own sequence and chunk.
TEST(CudaCodec3, NarrowAndWideChunksInOneBatch) {
  SKIP_WITHOUT_DEVICE();
  const auto cal_data = std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq());
  const Calibration cal(cal_data);
  std::vector<std::vector<uint8_t>> blobs;
  for (int lanes : {64, 32, 7, 33}) blobs.push_back(encode3(*cal_data, small_test(), 16.0, lanes));
  testing::expect_batch_decode_matches_cpu(cal, blobs);

  auto parsed = parse_container(blobs[1].data(), blobs[1].size());
  ASSERT_TRUE(parsed.is_ok());
  size_t chunk = 0;
  while (chunk < parsed->header.chunks.size() && parsed->header.chunks[chunk].coder != ChunkCoder::kEcsqRans) ++chunk;
  ASSERT_LT(chunk, parsed->header.chunks.size());
  const ChunkEntry& c = parsed->header.chunks[chunk];
  ASSERT_GT(c.stored_bytes, 12u);
  std::vector<std::vector<uint8_t>> bad = blobs;
  bad[1][parsed->payload_offset + c.offset + kRansChunkHeaderBytes + 1] ^= 0x40;  // lane 0's state
  cuda::BatchDecoder dec;
  cuda::BatchDecodeOptions bo;
  bo.verify_checksums = false;
  std::vector<cuda::ContainerView> views;
  for (const auto& b : bad) views.push_back({b.data(), b.size()});
  auto dcal = cuda::DeviceCalibration::upload(cal, cuda::DeviceCalibration::Options{}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  const Status st = dec.decode(*dcal, views, bo, nullptr);
  ASSERT_EQ(st.code(), StatusCode::kCorrupt) << st.to_string();
  EXPECT_NE(st.message().find("sequence 1 chunk " + std::to_string(chunk) + ":"), std::string::npos) << st.to_string();
  bo.verify_checksums = true;
  EXPECT_EQ(dec.decode(*dcal, views, bo, nullptr).code(), StatusCode::kChecksumMismatch);
}

// The GPU encoder writes codec 2 only: codec 3 is refused with UNSUPPORTED, never a wrong container.
TEST(CudaCodec3, GpuEncoderRefusesCodecThree) {
  SKIP_WITHOUT_DEVICE();
  const CalibrationData& cal = testing::small_calibration_with_ecsq();
  EncodeOptions eo;
  eo.target_ratio = 20.0;
  eo.codec = 3;
  eo.measure_error = false;
  auto enc = make_cuda_backend()->encode(cal, small_test(), eo, nullptr);
  ASSERT_FALSE(enc.is_ok());
  EXPECT_EQ(enc.status().code(), StatusCode::kUnsupported) << enc.status().to_string();
}

}  // namespace
}  // namespace kvtc
