// The CUDA decoder against the CPU decoder and the reference decoder: coefficients bit for bit,
// restored tensors within fp32 (or bf16) rounding, corrupted containers rejected with a status.
//
// The calibration is made here (mean + a random orthonormal basis + a hand-made allocation that uses
// every group kind and width 1..8): the codec does not care where its basis came from, and this keeps
// the test independent of the calibration pipeline.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/chunk_codec.hpp"
#include "core/reference_decoder.hpp"
#include "core/token_vectors.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "entropy/deflate.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

constexpr double kRatio = 20.0;

using testing::all_kinds_groups;
using testing::check_container;
using testing::simple_groups;

// Mean of the cache's own vectors, a random basis, one allocation per stream at kRatio.
CalibrationData make_calibration(const KVCache& cache, int64_t rank, std::vector<Group> kg, std::vector<Group> vg,
                                 int n_sink, int n_window) {
  return testing::synthetic_calibration(cache, rank, {kRatio}, {testing::fixed_allocation(kRatio, std::move(kg))},
                                       {testing::fixed_allocation(kRatio, std::move(vg))}, n_sink, n_window);
}

// Rewrites every aligned codes chunk of a container in the dense layout (section 5), so that both
// layouts are exercised whatever the encoder chose.
std::vector<uint8_t> to_dense(const std::vector<uint8_t>& bytes) {
  auto parsed = parse_container(bytes.data(), bytes.size());
  EXPECT_TRUE(parsed.is_ok());
  ContainerHeader h = parsed->header;
  const uint8_t* payload = bytes.data() + parsed->payload_offset;
  std::vector<uint8_t> out_payload;
  for (ChunkEntry& c : h.chunks) {
    std::vector<uint8_t> stored(payload + c.offset, payload + c.offset + c.stored_bytes);
    if (c.kind == ChunkKind::kCodes && c.layout == CodesLayout::kAligned) {
      std::vector<uint8_t> raw(c.raw_bytes);
      EXPECT_TRUE(inflate_raw(stored.data(), stored.size(), raw.data(), raw.size()).is_ok());
      const StreamAllocation& a = h.streams[c.stream];
      BlockSymbols b;
      b.n_tokens = c.n_tokens;
      EXPECT_TRUE(unpack_codes(a, raw.data(), raw.size(), c.item_begin, c.item_begin + c.n_items, c.layout, b).is_ok());
      pack_codes(a, b, c.item_begin, c.item_begin + c.n_items, CodesLayout::kDense, raw);
      EXPECT_TRUE(deflate_raw(raw.data(), raw.size(), 6, stored).is_ok());
      c.layout = CodesLayout::kDense;
      c.raw_bytes = uint32_t(raw.size());
      c.stored_bytes = uint32_t(stored.size());
      c.crc32 = crc32_of(stored.data(), stored.size());
    }
    c.offset = out_payload.size();
    out_payload.insert(out_payload.end(), stored.begin(), stored.end());
  }
  std::vector<uint8_t> out = serialize_container_header(h);
  out.insert(out.end(), out_payload.begin(), out_payload.end());
  return out;
}

struct Case {
  DType dtype;
  RopeStyle style;
  bool dense;
  int64_t position_offset;
};

// Stable, readable names and printouts (the default prints the struct's bytes, padding included,
// which would change ctest's test names from build to build).
std::string case_name(const Case& c) {
  return std::string(c.dtype == DType::kF32 ? "f32" : c.dtype == DType::kBF16 ? "bf16" : "f16") +
         (c.style == RopeStyle::kHalf ? "_half" : "_interleaved") + (c.dense ? "_dense" : "_aligned") + "_pos" +
         std::to_string(c.position_offset);
}
void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

class CudaDecode : public ::testing::TestWithParam<Case> {};

// A 4-layer, 2-head synthetic cache of 300 tokens in small chunks, encoded on the CPU, through
// check_container.
void check_synthetic(int head_dim, RopeStyle style, DType dtype, int64_t position_offset, bool dense, uint64_t seed) {
  ModelShape shape;
  shape.n_layers = 4;
  shape.n_kv_heads = 2;
  shape.head_dim = head_dim;
  shape.rope.theta = 10000.0;
  shape.rope.style = style;
  KVCache cache = testing::synthetic_cache(shape, 300, seed, dtype);
  cache.position_offset = position_offset;
  cache.sync_metadata();
  const CalibrationData cal = make_calibration(cache, 96, all_kinds_groups(), simple_groups(52), 4, 32);
  EncodeOptions eo;
  eo.target_ratio = kRatio;
  eo.chunk_tokens = 48;
  eo.chunk_max_bytes = 256;
  eo.measure_error = false;
  auto enc = make_cpu_backend()->encode(cal, cache, eo, nullptr);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  check_container(cal, dense ? to_dense(enc->bytes) : enc->bytes);
}

TEST_P(CudaDecode, MatchesCpuAndReference) {
  SKIP_WITHOUT_DEVICE();
  const Case c = GetParam();
  check_synthetic(32, c.style, c.dtype, c.position_offset, c.dense, 5);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaDecode,
                         ::testing::Values(Case{DType::kF32, RopeStyle::kHalf, false, 0},
                                           Case{DType::kBF16, RopeStyle::kHalf, true, 0},
                                           Case{DType::kF16, RopeStyle::kInterleaved, false, 1000},
                                           Case{DType::kBF16, RopeStyle::kInterleaved, true, 77}),
                         [](const ::testing::TestParamInfo<Case>& param_info) { return case_name(param_info.param); });

// A head_dim whose half is odd (18): the epilogue's one-pair-per-thread kernel, which the paired one
// (half even, as in every model above) replaces elsewhere.
TEST(CudaDecodeOddHalf, MatchesCpuAndReference) {
  SKIP_WITHOUT_DEVICE();
  for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
    SCOPED_TRACE(style == RopeStyle::kHalf ? "half" : "interleaved");
    check_synthetic(18, style, DType::kBF16, 0, false, 6);
  }
}

// A real cache of the reference model (repo data/), through the same checks.
TEST(CudaDecodeReal, SmallTestCacheMatchesCpu) {
  SKIP_WITHOUT_DEVICE();
  auto cache = read_cache(testing::repo_data("small-test.safetensors"));
  ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
  const CalibrationData cal = make_calibration(*cache, 128, simple_groups(128), all_kinds_groups(), 4, 128);
  EncodeOptions eo;
  eo.target_ratio = kRatio;
  eo.measure_error = false;
  auto enc = make_cpu_backend()->encode(cal, *cache, eo, nullptr);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  check_container(cal, enc->bytes);
  check_container(cal, to_dense(enc->bytes));
}

// Flipped bits: with checksums the GPU reports CHECKSUM_MISMATCH like the CPU; without them, it fails
// exactly when the CPU decoder fails, and when both succeed the coefficients agree.
TEST(CudaDecodeCorrupt, FlippedBitsGiveStatusLikeCpu) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 32;
  KVCache cache = testing::synthetic_cache(shape, 200, 9, DType::kBF16);
  const CalibrationData cal = make_calibration(cache, 64, simple_groups(40), all_kinds_groups(), 4, 16);
  EncodeOptions eo;
  eo.target_ratio = kRatio;
  eo.chunk_tokens = 64;
  eo.chunk_max_bytes = 256;
  eo.measure_error = false;
  auto enc = make_cpu_backend()->encode(cal, cache, eo, nullptr);
  ASSERT_TRUE(enc.is_ok());
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(parsed.is_ok());
  const size_t payload = parsed->payload_offset;
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend();
  std::mt19937_64 rng(3);
  int rejected = 0;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<uint8_t> bad = enc->bytes;
    bad[payload + rng() % (bad.size() - payload)] ^= uint8_t(1u << (rng() % 8));
    DecodeOptions with_crc, without_crc;
    without_crc.verify_checksums = false;
    auto g1 = gpu->decode_coefficients(cal, bad.data(), bad.size(), with_crc, nullptr);
    ASSERT_FALSE(g1.is_ok());
    EXPECT_EQ(g1.status().code(), StatusCode::kChecksumMismatch) << g1.status().to_string();
    auto c2 = cpu->decode_coefficients(cal, bad.data(), bad.size(), without_crc, nullptr);
    auto g2 = gpu->decode_coefficients(cal, bad.data(), bad.size(), without_crc, nullptr);
    EXPECT_EQ(c2.is_ok(), g2.is_ok()) << "trial " << trial << ": CPU " << c2.status().to_string() << ", GPU "
                                      << g2.status().to_string();
    if (c2.is_ok() && g2.is_ok()) {
      for (int s = 0; s < 2; ++s) EXPECT_EQ(c2->coef[s], g2->coef[s]);
    } else if (!g2.is_ok()) {
      EXPECT_EQ(g2.status().code(), StatusCode::kCorrupt);
      ++rejected;
    }
  }
  std::printf("%d of 200 flipped containers rejected without checksums\n", rejected);
  // A truncated container is refused before anything runs on the GPU.
  auto t = gpu->decode_coefficients(cal, enc->bytes.data(), enc->bytes.size() - 1, DecodeOptions{}, nullptr);
  EXPECT_EQ(t.status().code(), StatusCode::kCorrupt);
}

// The public batched API: several sequences in one decode, bf16 and fp32 restores into device memory
// with layer events, compared with the CPU decoder (bf16 tolerance: 1e-2 of the largest magnitude).
TEST(CudaBatchApi, ManySequencesBf16AndF32) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 3;
  shape.n_kv_heads = 2;
  shape.head_dim = 64;
  KVCache base = testing::synthetic_cache(shape, 160, 21, DType::kBF16);
  const auto cal_data = std::make_shared<CalibrationData>(make_calibration(base, 80, all_kinds_groups(), simple_groups(60), 4, 16));
  const Calibration cal(cal_data);
  std::vector<std::vector<uint8_t>> blobs;
  std::vector<KVCache> caches;
  for (int q = 0; q < 3; ++q) {
    KVCache c = testing::synthetic_cache(shape, 100 + 40 * q, 100 + q, DType::kBF16);
    EncodeOptions eo;
    eo.target_ratio = kRatio;
    eo.chunk_tokens = 32;
    eo.measure_error = false;
    auto enc = make_cpu_backend()->encode(*cal_data, c, eo, nullptr);
    ASSERT_TRUE(enc.is_ok());
    blobs.push_back(enc->bytes);
  }
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  cuda::BatchDecoder dec;
  std::vector<cuda::ContainerView> views;
  for (auto& b : blobs) views.push_back({b.data(), b.size()});
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlap_exact" : "no overlap");
    cuda::BatchDecodeOptions bo;
    bo.overlap_exact = overlap;
    ASSERT_TRUE(dec.decode(*dcal, views, bo, nullptr).is_ok());
    ASSERT_EQ(dec.n_sequences(), 3);
    testing::expect_batch_matches_cpu(dec, *dcal, *cal_data, blobs);
    EXPECT_TRUE(dec.exact_status().is_ok());
  }
  // An overlapped decode of a container whose exact chunk is corrupt: coefficients decode, and the
  // exact chunk's checksum failure is reported by exact_status().
  {
    auto parsed = parse_container(blobs[0].data(), blobs[0].size());
    ASSERT_TRUE(parsed.is_ok());
    std::vector<uint8_t> bad = blobs[0];
    for (const ChunkEntry& c : parsed->header.chunks)
      if (c.kind == ChunkKind::kExact) {
        bad[parsed->payload_offset + c.offset] ^= 0x10;
        break;
      }
    cuda::BatchDecodeOptions bo;
    bo.overlap_exact = true;
    ASSERT_TRUE(dec.decode(*dcal, {{bad.data(), bad.size()}}, bo, nullptr).is_ok());
    EXPECT_EQ(dec.exact_status().code(), StatusCode::kChecksumMismatch);
    bo.overlap_exact = false;
    EXPECT_EQ(dec.decode(*dcal, {{bad.data(), bad.size()}}, bo, nullptr).code(), StatusCode::kChecksumMismatch);
  }
}


// vLLM's paged layout: restoring into [num_blocks][2][block_size][H][D] through a shuffled block table
// gives, element for element, what the contiguous restore gives, and leaves blocks outside the table
// untouched.
TEST(CudaBatchApi, PagedLayoutEqualsContiguous) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 32;
  KVCache base = testing::synthetic_cache(shape, 300, 31, DType::kBF16);
  const auto cal_data = std::make_shared<CalibrationData>(make_calibration(base, 80, all_kinds_groups(), simple_groups(50), 4, 16));
  const Calibration cal(cal_data);
  KVCache c = testing::synthetic_cache(shape, 203, 32, DType::kBF16);  // not a multiple of the block size
  EncodeOptions eo;
  eo.target_ratio = kRatio;
  eo.chunk_tokens = 64;
  eo.measure_error = false;
  auto enc = make_cpu_backend()->encode(*cal_data, c, eo, nullptr);
  ASSERT_TRUE(enc.is_ok());
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  cuda::BatchDecoder dec;
  ASSERT_TRUE(dec.decode(*dcal, {{enc->bytes.data(), enc->bytes.size()}}, {}, nullptr).is_ok());
  testing::expect_paged_equals_contiguous(dec, *dcal, shape, {cuda::ElementType::kF32, cuda::ElementType::kBF16});
}


// A caller-provided workspace of workspace_bytes() is enough for decode and restores and gives the same
// results as the decoder's own buffers; a smaller one is refused; with defer_status a corrupt chunk is
// reported by status(), not by decode().
TEST(CudaBatchApi, WorkspaceAndDeferredStatus) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 32;
  KVCache base = testing::synthetic_cache(shape, 300, 41, DType::kBF16);
  const auto cal_data = std::make_shared<CalibrationData>(make_calibration(base, 80, all_kinds_groups(), simple_groups(50), 4, 16));
  const Calibration cal(cal_data);
  std::vector<std::vector<uint8_t>> blobs;
  for (int q = 0; q < 2; ++q) {
    EncodeOptions eo;
    eo.target_ratio = kRatio;
    eo.chunk_tokens = 48;
    eo.chunk_max_bytes = 512;
    eo.measure_error = false;
    auto enc = make_cpu_backend()->encode(*cal_data, testing::synthetic_cache(shape, 180 + 30 * q, 42 + q, DType::kBF16), eo, nullptr);
    ASSERT_TRUE(enc.is_ok());
    blobs.push_back(enc->bytes);
  }
  std::vector<cuda::ContainerView> views;
  for (auto& b : blobs) views.push_back({b.data(), b.size()});
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok());
  cuda::BatchDecodeOptions bo;
  auto need = cuda::BatchDecoder::workspace_bytes(*dcal, views, bo);
  ASSERT_TRUE(need.is_ok()) << need.status().to_string();
  EXPECT_GT(*need, blobs[0].size() + blobs[1].size());

  cuda::BatchDecoder own, ws;
  ASSERT_TRUE(own.decode(*dcal, views, bo, nullptr).is_ok());
  void* mem = nullptr;
  ASSERT_EQ(cudaMalloc(&mem, *need), cudaSuccess);
  ASSERT_TRUE(ws.set_workspace(mem, *need - 1).is_ok());
  EXPECT_EQ(ws.decode(*dcal, views, bo, nullptr).code(), StatusCode::kOutOfMemory);
  ASSERT_TRUE(ws.set_workspace(mem, *need).is_ok());
  bo.defer_status = true;
  ASSERT_TRUE(ws.decode(*dcal, views, bo, nullptr).is_ok());
  ASSERT_TRUE(ws.status().is_ok());
  for (int q = 0; q < 2; ++q)
    for (auto type : {cuda::ElementType::kF32, cuda::ElementType::kBF16}) {
      std::vector<std::vector<float>> k1, v1, k2, v2;
      ASSERT_TRUE(cuda_restore_all_to_host(own, *dcal, q, type, &k1, &v1).is_ok());
      ASSERT_TRUE(cuda_restore_all_to_host(ws, *dcal, q, type, &k2, &v2).is_ok());
      EXPECT_EQ(k1, k2) << "sequence " << q;
      EXPECT_EQ(v1, v2) << "sequence " << q;
    }
  // A flipped bit in a codes chunk: decode() queues the work and returns; status() names the chunk.
  auto parsed = parse_container(blobs[1].data(), blobs[1].size());
  ASSERT_TRUE(parsed.is_ok());
  std::vector<uint8_t> bad = blobs[1];
  for (const ChunkEntry& c : parsed->header.chunks)
    if (c.kind == ChunkKind::kCodes) {
      bad[parsed->payload_offset + c.offset + c.stored_bytes / 2] ^= 0x04;
      break;
    }
  ASSERT_TRUE(ws.decode(*dcal, {views[0], {bad.data(), bad.size()}}, bo, nullptr).is_ok());
  const Status st = ws.status();
  EXPECT_EQ(st.code(), StatusCode::kChecksumMismatch) << st.to_string();
  EXPECT_NE(st.message().find("sequence 1"), std::string::npos) << st.message();
  EXPECT_TRUE(ws.status().is_ok()) << "reported once";
  ASSERT_TRUE(ws.set_workspace(nullptr, 0).is_ok());
  cudaFree(mem);
}

}  // namespace
}  // namespace kvtc
