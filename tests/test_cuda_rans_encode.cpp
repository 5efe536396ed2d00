// The GPU rANS encoder (src/cuda/rans_encode.cu) against the CPU's rans_encode, byte for byte: random
// symbols under skewed tables with several runs (empty ones included), 1..64 lanes and chunk sizes from
// 0 to the bound, many chunks in one launch; the codes chunks of real codec 3 containers (format 3 and
// 4) re-encoded to their stored bytes; symbols a table cannot code and malformed jobs refused per chunk.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/ecsq_inspect.hpp"
#include "cuda/rans_batch_encoder.hpp"
#include "cuda_test_util.hpp"
#include "entropy/rans_encode.hpp"
#include "entropy/rans_table.hpp"
#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

// A table over `alphabet` symbols with geometric counts (a quantiser's shape), every symbol codable.
RansTable skewed_table(int alphabet, int prob_bits, double decay) {
  std::vector<uint64_t> counts(static_cast<size_t>(alphabet));
  for (int s = 0; s < alphabet; ++s) counts[size_t(s)] = uint64_t(1 + 100000.0 * std::pow(decay, s));
  auto t = build_rans_table(counts, prob_bits, true);
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  return *t;
}

// Symbols drawn from each run's table.
std::vector<uint8_t> draw(const std::vector<RansRun>& runs, std::mt19937& rng) {
  std::vector<uint8_t> x;
  for (const RansRun& r : runs) {
    std::discrete_distribution<int> d(r.table->freq.begin(), r.table->freq.end());
    for (uint32_t i = 0; i < r.n_symbols; ++i) x.push_back(uint8_t(d(rng)));
  }
  return x;
}

struct Case {
  std::vector<RansRun> runs;
  std::vector<uint8_t> symbols;
  int lanes = 32;
};

// GPU-encodes the cases in one launch and compares every chunk with the CPU encoder's.
void expect_same_as_cpu(const std::vector<Case>& cases) {
  std::vector<cuda::RansChunkInput> in;
  for (const Case& c : cases)
    in.push_back({c.symbols.data(), uint32_t(c.symbols.size()), c.runs.data(), uint32_t(c.runs.size()), c.lanes});
  cuda::RansBatchEncoder enc;
  ASSERT_TRUE(enc.upload(in, nullptr).is_ok());
  ASSERT_TRUE(enc.encode(nullptr).is_ok());
  std::vector<std::vector<uint8_t>> got;
  const Status st = enc.download(&got, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  ASSERT_EQ(got.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<uint8_t> want;
    ASSERT_TRUE(rans_encode(cases[i].symbols.data(), cases[i].symbols.size(), cases[i].runs.data(), cases[i].runs.size(),
                            cases[i].lanes, want)
                    .is_ok());
    EXPECT_EQ(got[i], want) << "chunk " << i << ": " << cases[i].symbols.size() << " symbols, " << cases[i].lanes
                            << " lanes, " << cases[i].runs.size() << " runs";
  }
}

TEST(CudaRansEncode, RandomChunksMatchTheCpuEncoder) {
  SKIP_WITHOUT_DEVICE();
  const RansTable narrow = skewed_table(4, 12, 0.1), wide = skewed_table(200, 15, 0.97), tiny = skewed_table(2, 1, 0.5);
  const RansTable mid = skewed_table(17, 10, 0.6);
  std::mt19937 rng(7);
  std::vector<Case> cases;
  for (int lanes : {1, 2, 7, 31, 32, 33, 63, 64})
    for (uint32_t n : {0u, 1u, 5u, 64u, 65u, 1000u, 4099u, kRansMaxChunkSymbols}) {
      Case c;
      c.lanes = lanes;
      // Runs of several tables, an empty one in the middle and one at the end, as codes chunks have.
      const uint32_t a = n / 3, b = n / 4, rest = n - a - b;
      c.runs = {{a, &wide}, {0, &narrow}, {b, &mid}, {rest / 2, &tiny}, {rest - rest / 2, &narrow}, {0, &wide}};
      c.symbols = draw(c.runs, rng);
      cases.push_back(std::move(c));
    }
  expect_same_as_cpu(cases);
}

// The codes chunks of real codec 3 containers of the reference model (format 3 at two lane counts, and
// format 4 with its two runs per component), all in one launch: the GPU writes the stored bytes again.
TEST(CudaRansEncode, RealCodesChunksReencodeToTheirStoredBytes) {
  SKIP_WITHOUT_DEVICE();
  const CalibrationData& cal = testing::small_calibration_with_ecsq();
  const KVCache& cache = testing::repo_cache("small-test.safetensors");
  std::vector<std::vector<uint8_t>> containers;
  for (int variant = 0; variant < 3; ++variant) {
    EncodeOptions o;
    o.codec = 3;
    o.target_ratio = 12;
    o.rans_lanes = variant == 1 ? 64 : 32;
    if (variant == 2) {
      auto imp = attention_importance(cache, 4, cache.n_tokens - 128);
      ASSERT_TRUE(imp.is_ok()) << imp.status().to_string();
      o.token_importance = *imp;
    }
    auto e = encode(Calibration(std::make_shared<CalibrationData>(cal)), cache, o);
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    containers.push_back(e->bytes);
  }
  std::vector<Case> cases;
  std::vector<std::vector<uint8_t>> stored;
  for (const auto& bytes : containers) {
    auto chunks = ecsq_container_rans_chunks(cal, bytes.data(), bytes.size());
    ASSERT_TRUE(chunks.is_ok()) << chunks.status().to_string();
    for (EcsqChunkRans& c : *chunks) {
      cases.push_back({c.runs, c.symbols, c.n_lanes});
      stored.push_back(c.rans_bytes);
    }
  }
  ASSERT_GT(cases.size(), 10u);
  std::vector<cuda::RansChunkInput> in;
  for (const Case& c : cases)
    in.push_back({c.symbols.data(), uint32_t(c.symbols.size()), c.runs.data(), uint32_t(c.runs.size()), c.lanes});
  cuda::RansBatchEncoder enc;
  ASSERT_TRUE(enc.upload(in, nullptr).is_ok());
  ASSERT_TRUE(enc.encode(nullptr).is_ok());
  std::vector<std::vector<uint8_t>> got;
  ASSERT_TRUE(enc.download(&got, nullptr).is_ok());
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(got[i], stored[i]) << "chunk " << i;
}

// A symbol of frequency 0 (or outside the alphabet) fails its own chunk with INVALID_ARGUMENT naming
// it; the host refuses runs that do not cover the symbols and bad lane counts before any launch.
TEST(CudaRansEncode, UncodableSymbolsAndBadJobsAreRefused) {
  SKIP_WITHOUT_DEVICE();
  std::vector<uint64_t> counts = {50, 0, 50, 10};
  auto holes = build_rans_table(counts, 8, false);  // symbol 1 cannot be coded
  ASSERT_TRUE(holes.is_ok());
  const RansTable ok_table = skewed_table(4, 8, 0.5);
  const std::vector<uint8_t> good = {0, 2, 3, 0, 2}, zero_freq = {0, 2, 1, 0, 2}, outside = {0, 2, 9, 0, 2};
  const RansRun run_holes{5, &*holes}, run_ok{5, &ok_table};
  for (const auto* bad : {&zero_freq, &outside}) {
    cuda::RansBatchEncoder enc;
    const std::vector<cuda::RansChunkInput> in = {{good.data(), 5, &run_holes, 1, 4}, {bad->data(), 5, &run_holes, 1, 4}};
    ASSERT_TRUE(enc.upload(in, nullptr).is_ok());
    ASSERT_TRUE(enc.encode(nullptr).is_ok());
    std::vector<std::vector<uint8_t>> got;
    const Status st = enc.download(&got, nullptr);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("chunk 1"), std::string::npos) << st.message();
  }
  cuda::RansBatchEncoder enc;
  const RansRun short_run{4, &ok_table};
  EXPECT_EQ(enc.upload({{good.data(), 5, &short_run, 1, 4}}, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(enc.upload({{good.data(), 5, &run_ok, 1, 0}}, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(enc.upload({{good.data(), 5, &run_ok, 1, 65}}, nullptr).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtc
