// Codec v3's quantiser (core/ecsq.hpp): symbols and their inverse, the quantiser's edge cases, the
// ladder learnt from synthetic coefficients (budgets, monotone rate and error, valid tables), and the
// serialised model against every kind of damage.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/ecsq.hpp"
#include "entropy/rans_table.hpp"

namespace kvtc {
namespace {

void expect_symbol_round_trip(int32_t q) {
  const EcsqSymbol s = ecsq_symbol(q);
  ASSERT_LT(s.symbol, uint32_t(kEcsqSignedSymbols)) << q;
  if (q == 0) {
    EXPECT_EQ(s.symbol, 0u);
    EXPECT_EQ(s.n_bits, 0);
  } else {
    EXPECT_EQ(s.symbol % 2, q > 0 ? 1u : 0u) << q;
    EXPECT_EQ(s.n_bits, ecsq_bucket_bits(ecsq_magnitude_symbol(s.symbol))) << q;
  }
  EXPECT_LT(uint64_t(s.bits), uint64_t(1) << s.n_bits) << q;
  EXPECT_EQ(ecsq_code(s.symbol, s.bits), q) << q;
}

TEST(EcsqSymbols, RoundTripSmallCodes) {
  for (int32_t q = 0; q <= 300; ++q) {
    expect_symbol_round_trip(q);
    expect_symbol_round_trip(-q);
  }
  for (int32_t q = 1; q <= kEcsqDirectMax; ++q) EXPECT_EQ(ecsq_symbol(q).n_bits, 0) << q;
  EXPECT_EQ(ecsq_symbol(kEcsqDirectMax + 1).n_bits, 0);  // bucket e = 0: one magnitude, no raw bits
  EXPECT_EQ(ecsq_symbol(kEcsqDirectMax + 1).symbol, uint32_t(2 * (kEcsqDirectMax + 1) - 1));
}

TEST(EcsqSymbols, RoundTripAroundEveryBucketBoundary) {
  for (int e = 0; e <= kEcsqMaxExponent; ++e) {
    const int32_t lo = kEcsqDirectMax + (int32_t(1) << e);  // first magnitude of bucket e
    for (int32_t q = lo - 2; q <= lo + 2; ++q) {
      if (q < 0 || q > kEcsqMaxMagnitude) continue;
      expect_symbol_round_trip(q);
      expect_symbol_round_trip(-q);
    }
    EXPECT_EQ(ecsq_magnitude_symbol(ecsq_symbol(lo).symbol), kEcsqDirectMax + 1 + e);
    EXPECT_EQ(ecsq_magnitude_symbol(ecsq_symbol(lo - 1).symbol), e == 0 ? kEcsqDirectMax : kEcsqDirectMax + e);
  }
  for (int32_t q : {kEcsqMaxMagnitude - 1, kEcsqMaxMagnitude}) {
    expect_symbol_round_trip(q);
    expect_symbol_round_trip(-q);
  }
  EXPECT_EQ(ecsq_magnitude_symbol(ecsq_symbol(kEcsqMaxMagnitude).symbol), kEcsqMaxMagnitudeSymbol);
  EXPECT_EQ(ecsq_symbol(-kEcsqMaxMagnitude).symbol, uint32_t(kEcsqSignedSymbols - 1));
}

TEST(EcsqQuantize, EdgeCases) {
  const float step = 0.25f;
  EXPECT_EQ(ecsq_quantize(std::numeric_limits<float>::quiet_NaN(), step), 0);
  EXPECT_EQ(ecsq_quantize(-std::numeric_limits<float>::quiet_NaN(), step), 0);
  EXPECT_EQ(ecsq_quantize(std::numeric_limits<float>::infinity(), step), kEcsqMaxMagnitude);
  EXPECT_EQ(ecsq_quantize(-std::numeric_limits<float>::infinity(), step), -kEcsqMaxMagnitude);
  EXPECT_EQ(ecsq_quantize(std::numeric_limits<float>::max(), step), kEcsqMaxMagnitude);
  EXPECT_EQ(ecsq_quantize(-1e30f, step), -kEcsqMaxMagnitude);
  EXPECT_EQ(ecsq_quantize(0.0f, step), 0);
  EXPECT_EQ(ecsq_quantize(-0.0f, step), 0);
  EXPECT_FALSE(std::signbit(ecsq_dequantize(ecsq_quantize(-0.0f, step), step, 0.1f)));
  // Exact half steps round away from zero, just below them towards it.
  EXPECT_EQ(ecsq_quantize(0.5f * step, step), 1);
  EXPECT_EQ(ecsq_quantize(-0.5f * step, step), -1);
  EXPECT_EQ(ecsq_quantize(1.5f * step, step), 2);
  EXPECT_EQ(ecsq_quantize(-2.5f * step, step), -3);
  EXPECT_EQ(ecsq_quantize(0.49f * step, step), 0);
  // The definition is the fp32 expression, not exact rounding: for the float just below a half step,
  // |c| / step + 0.5f rounds up to 1.0f, and every implementation must agree on that.
  EXPECT_EQ(ecsq_quantize(std::nextafter(0.5f * step, 0.0f), step), 1);
  EXPECT_EQ(ecsq_quantize(std::nextafter(-1.5f * step, 0.0f), step), -1);
  EXPECT_EQ(ecsq_quantize(3.0f * step, step), 3);
  // The largest code is reached, never passed.
  EXPECT_EQ(ecsq_quantize(float(kEcsqMaxMagnitude) * 4.0f * step, step), kEcsqMaxMagnitude);
  EXPECT_EQ(ecsq_dequantize(0, step, 0.3f), 0.0f);
  EXPECT_EQ(ecsq_dequantize(3, step, 0.1f), (3.0f + 0.1f) * step);
  EXPECT_EQ(ecsq_dequantize(-3, step, 0.1f), -(3.0f + 0.1f) * step);
}

// Coefficients [n][k] with decreasing standard deviations, Laplacian for even components and
// Gaussian for odd ones, and component `zero` always 0.
std::vector<float> synthetic_coefficients(int64_t n, int64_t k, int64_t zero, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::exponential_distribution<double> expo(1.0);
  std::bernoulli_distribution coin(0.5);
  std::vector<float> c(static_cast<size_t>(n * k));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const double sigma = 40.0 * std::exp2(-double(j) / 3.0);
      double v = j % 2 == 0 ? (coin(rng) ? 1.0 : -1.0) * expo(rng) / std::sqrt(2.0) : gauss(rng);
      c[size_t(t * k + j)] = j == zero ? 0.0f : float(sigma * v + (j == 1 ? 3.0 : 0.0));
    }
  return c;
}

constexpr int64_t kSamples = 3000, kComponents = 24, kZero = 5;

const EcsqModel& synthetic_model() {
  static const EcsqModel model = [] {
    const auto c = synthetic_coefficients(kSamples, kComponents, kZero, 7);
    EcsqLearnOptions o;
    o.n_threads = 2;
    auto m = learn_ecsq_model(c.data(), kSamples, kComponents, kComponents, o);
    EXPECT_TRUE(m.is_ok()) << m.status().to_string();
    return std::move(m).value();
  }();
  return model;
}

// Mean squared error per token of quantising and reconstructing c at level l.
double measured_error(const EcsqModel& m, const std::vector<float>& c, int64_t n, int64_t k, size_t l) {
  double err = 0.0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const float x = c[size_t(t * k + j)];
      float y = 0.0f;
      if (const uint8_t cell = m.levels[l].cell[size_t(j)]; cell != 0) {
        const EcsqCell& e = m.cells[size_t(j)][cell - 1u];
        y = ecsq_dequantize(ecsq_quantize(x, e.step), e.step, e.delta);
      }
      err += (double(x) - y) * (double(x) - y);
    }
  return err / double(n);
}

TEST(EcsqLearn, LadderWithinBudgetsAndMonotone) {
  const EcsqModel& m = synthetic_model();
  const EcsqLearnOptions o;
  ASSERT_EQ(m.n_components(), uint32_t(kComponents));
  const int n_ladder = int(std::floor(std::log2(o.coarsest_ratio / o.finest_ratio) * o.levels_per_octave + 1e-9)) + 1;
  ASSERT_EQ(m.levels.size(), size_t(n_ladder + 1));
  for (size_t l = 0; l < m.levels.size(); ++l) {
    const EcsqLevel& lv = m.levels[l];
    ASSERT_EQ(lv.cell.size(), size_t(kComponents));
    if (l + 1 < m.levels.size()) {
      const double budget = 16.0 * kComponents / (o.finest_ratio * std::exp2(double(l) / o.levels_per_octave));
      EXPECT_LE(lv.bits_per_token, budget * (1 + 1e-12)) << "level " << l;
    }
    if (l > 0) {
      EXPECT_LE(lv.bits_per_token, m.levels[l - 1].bits_per_token) << "level " << l;
      EXPECT_GE(lv.error_per_token, m.levels[l - 1].error_per_token * (1 - 1e-12)) << "level " << l;
    }
    EXPECT_EQ(lv.cell[kZero], 0) << "a component without variance is never kept (level " << l << ")";
  }
  const EcsqLevel& last = m.levels.back();
  EXPECT_EQ(last.n_kept(), 0u);
  EXPECT_EQ(last.bits_per_token, 0.0);
  EXPECT_GT(m.levels.front().bits_per_token, 16.0 * kComponents / 4.0) << "the finest level uses its budget";
  EXPECT_TRUE(m.cells[kZero].empty());
}

TEST(EcsqLearn, CellsHoldValidTables) {
  const EcsqModel& m = synthetic_model();
  for (size_t j = 0; j < m.cells.size(); ++j) {
    EXPECT_LE(m.cells[j].size(), size_t(kEcsqGridSteps));
    for (const EcsqCell& c : m.cells[j]) {
      EXPECT_TRUE(c.step > 0.0f && std::isfinite(c.step)) << j;
      EXPECT_GE(c.delta, -0.5f);
      EXPECT_LE(c.delta, 0.5f);
      EXPECT_TRUE(validate_rans_table(c.table).is_ok()) << j;
      EXPECT_EQ(c.table.prob_bits, m.prob_bits);
      EXPECT_GE(c.table.alphabet_size(), 2);
      EXPECT_LE(c.table.alphabet_size(), kEcsqMaxTableAlphabet);
      for (uint16_t f : c.table.freq) EXPECT_GE(f, 1);
    }
    for (size_t i = 1; i < m.cells[j].size(); ++i) EXPECT_LT(m.cells[j][i - 1].step, m.cells[j][i].step) << "finest first";
  }
}

// The predictions are what quantising the same data gives, and a finer level never does worse.
TEST(EcsqLearn, FinerLevelsGiveLowerMeasuredError) {
  const EcsqModel& m = synthetic_model();
  const auto c = synthetic_coefficients(kSamples, kComponents, kZero, 7);
  double previous = -1.0;
  for (size_t l = 0; l < m.levels.size(); l += 16) {
    const double e = measured_error(m, c, kSamples, kComponents, l);
    EXPECT_NEAR(e, m.levels[l].error_per_token, 1e-6 * (m.levels.back().error_per_token)) << "level " << l;
    EXPECT_GE(e, previous * (1 - 1e-9)) << "level " << l;
    previous = e;
  }
  const double dropped = measured_error(m, c, kSamples, kComponents, m.levels.size() - 1);
  EXPECT_GT(dropped, previous);
  // Fresh data from the same distributions: still ordered.
  const auto fresh = synthetic_coefficients(kSamples, kComponents, kZero, 8);
  EXPECT_LT(measured_error(m, fresh, kSamples, kComponents, 0), measured_error(m, fresh, kSamples, kComponents, 64));
  EXPECT_LT(measured_error(m, fresh, kSamples, kComponents, 64), measured_error(m, fresh, kSamples, kComponents, 160));
}

TEST(EcsqLearn, PredictedLevelMeetsTheBudget) {
  const EcsqModel& m = synthetic_model();
  for (double ratio : {1.0, 2.0, 3.0, 8.0, 64.0, 256.0, 1e6}) {
    const uint32_t l = ecsq_predicted_level(m, kComponents, ratio);
    ASSERT_LT(l, m.levels.size());
    const double budget = 16.0 * kComponents / ratio;
    if (m.levels[l].bits_per_token > 0) {
      EXPECT_LE(m.levels[l].bits_per_token, budget) << ratio;
    }
    if (l > 0) {
      EXPECT_GT(m.levels[l - 1].bits_per_token, budget) << ratio;
    }
  }
}

TEST(EcsqLearn, RejectsBadArguments) {
  const auto c = synthetic_coefficients(10, 4, -1, 1);
  EcsqLearnOptions o;
  EXPECT_EQ(learn_ecsq_model(c.data(), 0, 4, 4, o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(learn_ecsq_model(c.data(), 10, 4, 3, o).status().code(), StatusCode::kInvalidArgument);
  o.prob_bits = 8;
  EXPECT_EQ(learn_ecsq_model(c.data(), 10, 4, 4, o).status().code(), StatusCode::kInvalidArgument);
  o = EcsqLearnOptions{};
  o.coarsest_ratio = 1.0;
  EXPECT_EQ(learn_ecsq_model(c.data(), 10, 4, 4, o).status().code(), StatusCode::kInvalidArgument);
}

// ---- serialisation -------------------------------------------------------------------------------

std::vector<uint8_t> model_bytes() {
  std::vector<uint8_t> b;
  serialize_ecsq_model(synthetic_model(), b);
  return b;
}

StatusCode parse_code(const std::vector<uint8_t>& b, uint32_t k = kComponents) {
  return parse_ecsq_model(b.data(), b.size(), k).status().code();
}

TEST(EcsqModelFile, RoundTripIsExact) {
  const std::vector<uint8_t> b = model_bytes();
  auto back = parse_ecsq_model(b.data(), b.size(), kComponents);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_TRUE(*back == synthetic_model());
  std::vector<uint8_t> again;
  serialize_ecsq_model(*back, again);
  EXPECT_EQ(again, b);
  EXPECT_EQ(ecsq_model_fingerprint(*back), ecsq_model_fingerprint(synthetic_model()));
  EcsqModel other = synthetic_model();
  other.cells[0][0].delta = std::nextafter(other.cells[0][0].delta, 1.0f);
  EXPECT_NE(ecsq_model_fingerprint(other), ecsq_model_fingerprint(synthetic_model()));
}

TEST(EcsqModelFile, TruncationAtEveryByteIsRefused) {
  // A small model (4 components, 5 levels): every prefix is parsed, so the cost grows with its square.
  const auto c4 = synthetic_coefficients(500, 4, 2, 3);
  EcsqLearnOptions o;
  o.coarsest_ratio = 8.0;
  o.levels_per_octave = 2;
  auto m = learn_ecsq_model(c4.data(), 500, 4, 4, o);
  ASSERT_TRUE(m.is_ok());
  std::vector<uint8_t> b;
  serialize_ecsq_model(*m, b);
  ASSERT_TRUE(parse_ecsq_model(b.data(), b.size(), 4).is_ok());
  for (size_t len = 0; len < b.size(); ++len) {
    const StatusCode c = parse_ecsq_model(b.data(), len, 4).status().code();
    ASSERT_TRUE(c == StatusCode::kCorrupt || c == StatusCode::kChecksumMismatch) << "length " << len;
  }
}

TEST(EcsqModelFile, DamageIsRefused) {
  const std::vector<uint8_t> b = model_bytes();
  const EcsqModel& m = synthetic_model();
  ASSERT_FALSE(m.cells[0].empty());
  EXPECT_EQ(parse_code(b, kComponents + 1), StatusCode::kCorrupt) << "component count";
  EXPECT_EQ(parse_code(b, kComponents - 1), StatusCode::kCorrupt) << "component count";
  auto with_u32 = [&](size_t at, uint32_t v) {
    std::vector<uint8_t> f = b;
    std::memcpy(&f[at], &v, 4);
    return f;
  };
  EXPECT_EQ(parse_code(with_u32(0, 8)), StatusCode::kCorrupt) << "prob_bits";
  EXPECT_EQ(parse_code(with_u32(0, 16)), StatusCode::kCorrupt) << "prob_bits";
  EXPECT_EQ(parse_code(with_u32(8, 0)), StatusCode::kCorrupt) << "no levels";
  EXPECT_EQ(parse_code(with_u32(8, kEcsqMaxLevels + 1)), StatusCode::kCorrupt) << "too many levels";
  EXPECT_EQ(parse_code(with_u32(8, uint32_t(m.levels.size() + 1))), StatusCode::kCorrupt) << "a level more";
  // Component 0: u8 n_cells at 12, then its first cell: u8 grid_step at 13, f32 step at 14, f32 delta at 18.
  std::vector<uint8_t> f = b;
  f[12] = kEcsqGridSteps + 1;
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "too many cells";
  auto with_f32 = [&](size_t at, float v) {
    std::vector<uint8_t> g = b;
    std::memcpy(&g[at], &v, 4);
    return g;
  };
  for (float bad : {0.0f, -0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()})
    EXPECT_EQ(parse_code(with_f32(14, bad)), StatusCode::kCorrupt) << "step " << bad;
  for (float bad : {0.5001f, -0.5001f, 1.0f, std::numeric_limits<float>::quiet_NaN()})
    EXPECT_EQ(parse_code(with_f32(18, bad)), StatusCode::kCorrupt) << "delta " << bad;
  EXPECT_EQ(parse_code(with_f32(18, 0.5f)), StatusCode::kOk) << "delta 0.5 is allowed";
  EXPECT_EQ(parse_code(with_f32(18, -0.5f)), StatusCode::kOk) << "delta -0.5 is allowed";
  // The first table starts at 22: u8 version, u8 prob_bits, u16 A, A x u16 freq, u32 CRC.
  f = b;
  f[22 + 4] ^= 1;
  EXPECT_EQ(parse_code(f), StatusCode::kChecksumMismatch) << "a table frequency";
  // The last level's cells are the last kComponents bytes: name a cell the component lacks.
  const size_t last = kComponents - 1;
  f = b;
  f[b.size() - kComponents + last] = uint8_t(m.cells[last].size() + 1);
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "missing cell";
  f = b;
  f[b.size() - kComponents + kZero] = 1;
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "a cell of a component without cells";
  // The last level's predicted bits: f64 at size - k - 16.
  f = b;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::memcpy(&f[b.size() - kComponents - 16], &nan, 8);
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "predicted bits NaN";
  f = b;
  f.push_back(0);
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "trailing byte";
  EXPECT_EQ(parse_ecsq_model(nullptr, 0, 0).status().code(), StatusCode::kCorrupt);
}

}  // namespace
}  // namespace kvtc
