// Codec 3 (container format 3, docs/FORMAT.md section 9) against the reference decoder: the fast CPU
// decoder and the reference decoder (the spec read aloud, with the slow reference rANS decoder) agree on
// every coefficient bit for bit, and on the restored tensors to the rounding of the reconstruction GEMM,
// on real caches at ratios 4 to 64, in block mode, and on synthetic caches whose coefficients include
// huge outliers, so that bucket symbols and escapes are exercised (the test checks that they occur).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "core/ecsq.hpp"
#include "core/reference_decoder.hpp"
#include "cpu/cpu_backend.hpp"
#include "entropy/rans_reference.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

// The calibration of small-calib.safetensors with the ECSQ models calibrate() learns (test_util).
const Calibration& real_calibration() {
  static const Calibration cal(std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq()));
  return cal;
}

// test_util's outlier case (escapes and bucket symbols) with its calibration as a public Calibration.
struct Synthetic {
  KVCache cache;
  Calibration cal{nullptr};
};

Synthetic synthetic(int64_t n_tokens, uint64_t seed) {
  testing::OutlierCase o = testing::outlier_case(n_tokens, seed);
  Synthetic s;
  s.cache = std::move(o.cache);
  s.cal = Calibration(std::make_shared<CalibrationData>(std::move(o.cal)));
  return s;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, double(std::fabs(x)));
  return m;
}

// The fast decoder's coefficients equal the reference's bit for bit (both are binary32 results of the
// spec's rule), and the restored tensors agree to fp32 rounding of the sums (sgemm vs a double loop).
void expect_decoders_agree(const Calibration& cal, const std::vector<uint8_t>& bytes) {
  CpuBackend cpu;
  auto fast_coef = cpu.decode_coefficients(cal.data(), bytes.data(), bytes.size(), DecodeOptions{}, nullptr);
  ASSERT_TRUE(fast_coef.is_ok()) << fast_coef.status().to_string();
  ReferenceCoefficients rc;
  auto ref = reference_decode(cal.data(), bytes.data(), bytes.size(), &rc);
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  const ContainerHeader& h = fast_coef->container.header;
  const int64_t m = int64_t(h.n_compressed_tokens());
  for (int s = 0; s < 2; ++s) {
    const int64_t kept = h.streams[s].n_kept(), rank = h.streams[s].basis_rank;
    ASSERT_EQ(rc.coef[s].size(), size_t(m * rank));
    for (int64_t t = 0; t < m; ++t)
      for (int64_t j = 0; j < rank; ++j) {
        const double want = j < kept ? double(fast_coef->coef[s][size_t(t * kept + j)]) : 0.0;
        ASSERT_EQ(rc.coef[s][size_t(t * rank + j)], want) << "stream " << s << " token " << t << " component " << j;
      }
  }
  auto fast = decode(cal, bytes.data(), bytes.size());
  ASSERT_TRUE(fast.is_ok()) << fast.status().to_string();
  EXPECT_EQ(fast->position_offset, ref->position_offset);
  for (int l = 0; l < h.shape.n_layers; ++l) {
    double dk = 0, dv = 0;
    for (size_t i = 0; i < fast->k[size_t(l)].size(); ++i) {
      dk = std::max(dk, double(std::fabs(fast->k[size_t(l)][i] - ref->k[size_t(l)][i])));
      dv = std::max(dv, double(std::fabs(fast->v[size_t(l)][i] - ref->v[size_t(l)][i])));
    }
    EXPECT_LE(dk, 2e-4 * max_abs(ref->k[size_t(l)])) << "layer " << l;
    EXPECT_LE(dv, 2e-4 * max_abs(ref->v[size_t(l)])) << "layer " << l;
  }
}

// What the codes chunks hold, from their symbols (decoded with the reference rANS decoder) and raw bit
// counts: escapes, and raw bits beyond the escapes' 8 each, which only bucket symbols write.
struct SymbolCounts {
  int64_t symbols = 0, escapes = 0, bucket_bits = 0;
};

SymbolCounts count_symbols(const CalibrationData& cal, const std::vector<uint8_t>& bytes) {
  SymbolCounts n;
  auto pc = parse_container(bytes.data(), bytes.size());
  EXPECT_TRUE(pc.is_ok());
  if (!pc.is_ok()) return n;
  for (const ChunkEntry& c : pc->header.chunks) {
    if (c.coder != ChunkCoder::kEcsqRans) continue;
    const StreamAllocation& a = pc->header.streams[c.stream];
    const EcsqModel& model = c.stream == 0 ? cal.key.ecsq : cal.value.ecsq;
    const EcsqLevel& level = model.levels[a.ecsq_level];
    const uint8_t* stored = bytes.data() + pc->payload_offset + c.offset;
    uint32_t stream_bytes, n_raw;
    std::memcpy(&stream_bytes, stored + 8, 4);
    const size_t rans_bytes = 12 + 4 * size_t(stored[4]) + stream_bytes;
    std::memcpy(&n_raw, stored + rans_bytes, 4);
    std::vector<RansRun> runs;
    std::vector<uint32_t> escape;
    for (uint32_t j = c.item_begin; j < c.item_begin + c.n_items; ++j)
      if (level.cell[j] != 0) {
        const RansTable& t = model.cells[j][level.cell[j] - 1u].table;
        runs.push_back({c.n_tokens, &t});
        escape.insert(escape.end(), c.n_tokens, uint32_t(t.alphabet_size() - 1));
      }
    std::vector<uint8_t> symbols(escape.size());
    EXPECT_TRUE(rans_decode_reference(stored, rans_bytes, runs.data(), runs.size(), symbols.data(), symbols.size()).is_ok());
    int64_t escapes = 0;
    for (size_t i = 0; i < symbols.size(); ++i) escapes += symbols[i] == escape[i];
    n.symbols += int64_t(symbols.size());
    n.escapes += escapes;
    n.bucket_bits += int64_t(n_raw) - 8 * escapes;
  }
  return n;
}

class CodecV3ReferenceAtRatio : public ::testing::TestWithParam<double> {};

TEST_P(CodecV3ReferenceAtRatio, FastDecoderMatchesReferenceOnRealCaches) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = GetParam();
  o.measure_error = false;
  auto enc = encode(real_calibration(), cache, o);
  ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
  auto pc = parse_container(enc->bytes.data(), enc->bytes.size());
  ASSERT_TRUE(pc.is_ok());
  ASSERT_EQ(pc->header.format_version, 3u);
  expect_decoders_agree(real_calibration(), enc->bytes);
}

INSTANTIATE_TEST_SUITE_P(Ratios, CodecV3ReferenceAtRatio, ::testing::Values(4.0, 8.0, 16.0, 32.0, 64.0));

TEST(CodecV3Reference, BlockModeAgreesAtTruePositions) {
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  for (int64_t a : {int64_t(0), int64_t(64), int64_t(200)}) {
    const int64_t b = a + 64;
    const CacheView view = testing::block_view(cache, a, b);
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = 16;
    o.exact_head_tokens = 0;
    o.exact_tail_tokens = 0;
    o.measure_error = false;
    auto enc = encode(real_calibration(), view, o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    EXPECT_EQ(enc->report.n_compressed_tokens, 64);
    auto ref = reference_decode(real_calibration().data(), enc->bytes.data(), enc->bytes.size());
    ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
    EXPECT_EQ(ref->position_offset, cache.position_offset + a);
    expect_decoders_agree(real_calibration(), enc->bytes);
  }
}

TEST(CodecV3Reference, SyntheticCachesWithBucketsAndEscapes) {
  SymbolCounts all;
  for (uint64_t seed : {3u, 4u}) {
    const Synthetic s = synthetic(200, seed);
    for (double ratio : {4.0, 8.0, 16.0, 64.0}) {
      EncodeOptions o;
      o.codec = 3;
      o.target_ratio = ratio;
      o.chunk_tokens = 64;
      o.measure_error = false;
      auto enc = encode(s.cal, s.cache, o);
      ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
      expect_decoders_agree(s.cal, enc->bytes);
      const SymbolCounts n = count_symbols(s.cal.data(), enc->bytes);
      all.symbols += n.symbols;
      all.escapes += n.escapes;
      all.bucket_bits += n.bucket_bits;
    }
    // Block mode: no exact tokens, the block at its true position, the outliers inside it.
    const CacheView view = testing::block_view(s.cache, 40, 140);  // position_offset 40: s.cache's is 0
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = 8;
    o.exact_head_tokens = 0;
    o.exact_tail_tokens = 0;
    o.measure_error = false;
    auto enc = encode(s.cal, view, o);
    ASSERT_TRUE(enc.is_ok()) << enc.status().to_string();
    expect_decoders_agree(s.cal, enc->bytes);
    const SymbolCounts n = count_symbols(s.cal.data(), enc->bytes);
    EXPECT_GT(n.escapes, 0);
    EXPECT_GT(n.bucket_bits, 0);
  }
  EXPECT_GT(all.symbols, 0);
  EXPECT_GT(all.escapes, 0) << "no escape was coded: the test does not reach section 9's escape rule";
  EXPECT_GT(all.bucket_bits, 0) << "no bucket was coded: the test does not reach section 9's bucket rule";
}

}  // namespace
}  // namespace kvtc
