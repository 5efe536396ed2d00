// Calibration: the file format (round trip, fingerprint, every kind of damage) and the pipeline on a
// real cache (allocations within budget, error rising with the ratio, shape mismatches refused).
#include <gtest/gtest.h>
#include <libdeflate.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/calibrate.hpp"
#include "core/calibration_data.hpp"
#include "format/calibration_file.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

ModelShape tiny_shape() {
  ModelShape s;
  s.n_layers = 2;
  s.n_kv_heads = 2;
  s.head_dim = 16;
  s.rope.theta = 10000.0;
  return s;  // p = 64
}

CalibrateOptions tiny_options() {
  CalibrateOptions o;
  o.ratios = {4, 8, 16};
  o.group_sizes = {1, 4, 16};
  o.n_sink_tokens = 2;
  o.n_window_tokens = 8;
  o.n_threads = 2;
  return o;
}

// A calibration of synthetic caches, built in memory.
const CalibrationData& tiny_calibration() {
  static const CalibrationData data = [] {
    auto acc = CalibrationAccumulator::create(tiny_shape(), "synthetic", tiny_options());
    EXPECT_TRUE(acc.is_ok()) << acc.status().to_string();
    for (uint64_t seed : {1, 2, 3}) EXPECT_TRUE(acc->add(testing::synthetic_cache(tiny_shape(), 120, seed)).is_ok());
    auto d = acc->finish();
    EXPECT_TRUE(d.is_ok()) << d.status().to_string();
    return std::move(d).value();
  }();
  return data;
}

void expect_same_basis(const PcaBasis& a, const PcaBasis& b) {
  EXPECT_EQ(a.n_features, b.n_features);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.n_samples, b.n_samples);
  EXPECT_EQ(a.total_variance, b.total_variance);
  EXPECT_EQ(a.mean, b.mean);
  EXPECT_EQ(a.variance, b.variance);
  EXPECT_EQ(a.components, b.components);
}

void expect_same(const CalibrationData& a, const CalibrationData& b) {
  EXPECT_TRUE(a.shape == b.shape);
  EXPECT_EQ(a.model_name, b.model_name);
  EXPECT_EQ(a.n_sink_tokens, b.n_sink_tokens);
  EXPECT_EQ(a.n_window_tokens, b.n_window_tokens);
  EXPECT_EQ(a.n_calibration_tokens, b.n_calibration_tokens);
  EXPECT_EQ(a.ratios, b.ratios);
  EXPECT_EQ(a.fingerprint, b.fingerprint);
  EXPECT_EQ(a.ecsq_folds, b.ecsq_folds);
  for (int s = 0; s < 2; ++s) {
    const StreamCalibration& x = s == 0 ? a.key : a.value;
    const StreamCalibration& y = s == 0 ? b.key : b.value;
    expect_same_basis(x.pca, y.pca);
    EXPECT_TRUE(x.ecsq == y.ecsq) << "ECSQ model of stream " << s;
    EXPECT_EQ(x.table.rank, y.table.rank);
    EXPECT_EQ(x.table.group_sizes, y.table.group_sizes);
    EXPECT_EQ(x.table.options, y.table.options);
    EXPECT_EQ(x.table.residual_error, y.table.residual_error);
    EXPECT_EQ(x.table.component_energy, y.table.component_energy);
    EXPECT_EQ(x.table.error, y.table.error);
    ASSERT_EQ(x.allocations.size(), y.allocations.size());
    for (size_t i = 0; i < x.allocations.size(); ++i) {
      EXPECT_EQ(x.allocations[i].target_ratio, y.allocations[i].target_ratio);
      EXPECT_EQ(x.allocations[i].budget_bits_per_token, y.allocations[i].budget_bits_per_token);
      EXPECT_EQ(x.allocations[i].bits_per_token, y.allocations[i].bits_per_token);
      EXPECT_EQ(x.allocations[i].predicted_error, y.allocations[i].predicted_error);
      EXPECT_EQ(x.allocations[i].groups, y.allocations[i].groups);
    }
  }
}

// Byte offsets of the sections of a serialized calibration: {header offset, payload offset, length}.
struct SectionSpan {
  std::string tag;
  size_t header, payload, length;
};
std::vector<SectionSpan> sections(const std::vector<uint8_t>& f) {
  std::vector<SectionSpan> out;
  size_t pos = 16;
  while (pos + 16 <= f.size()) {
    uint64_t len = 0;
    std::memcpy(&len, &f[pos + 4], 8);
    out.push_back({std::string(reinterpret_cast<const char*>(&f[pos]), 4), pos, pos + 16, size_t(len)});
    pos += 16 + size_t(len);
  }
  return out;
}
// Recomputes a section's CRC after a deliberate edit, so that only the semantic checks can object.
void fix_crc(std::vector<uint8_t>& f, const SectionSpan& s) {
  uint32_t crc = uint32_t(libdeflate_crc32(0, &f[s.header], 12));
  crc = uint32_t(libdeflate_crc32(crc, &f[s.payload], s.length));
  std::memcpy(&f[s.header + 12], &crc, 4);
}

StatusCode parse_code(const std::vector<uint8_t>& f) { return parse_calibration(f.data(), f.size()).status().code(); }

TEST(CalibrationFile, RoundTripIsExact) {
  const CalibrationData& d = tiny_calibration();
  auto bytes = serialize_calibration(d);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  auto back = parse_calibration(bytes->data(), bytes->size());
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  expect_same(d, *back);
  auto again = serialize_calibration(*back);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(*bytes, *again);
  // The layout the spec describes: magic, version 2, nine sections in order (ECSQ models learnt),
  // nothing after.
  const uint8_t magic[8] = {0x89, 'K', 'V', 'T', 'C', 'A', 'L', 0x1a};
  EXPECT_EQ(std::memcmp(bytes->data(), magic, 8), 0);
  EXPECT_EQ((*bytes)[8], 2);
  EXPECT_EQ((*bytes)[12], 9);
  ASSERT_FALSE(d.key.ecsq.empty());
  const auto spans = sections(*bytes);
  ASSERT_EQ(spans.size(), 9u);
  const char* tags[] = {"META", "KPCA", "KTAB", "KALC", "VPCA", "VTAB", "VALC", "KECQ", "VECQ"};
  for (size_t i = 0; i < 9; ++i) EXPECT_EQ(spans[i].tag, tags[i]);
  EXPECT_EQ(spans.back().payload + spans.back().length, bytes->size());
}

TEST(CalibrationFile, FingerprintIsStableAndTracksTheBasis) {
  const CalibrationData& d = tiny_calibration();
  const uint64_t fp = compute_fingerprint(d);
  EXPECT_EQ(fp, d.fingerprint);
  EXPECT_EQ(fp, compute_fingerprint(d));
  EXPECT_NE(fp, 0u);
  EXPECT_NE(uint32_t(fp), uint32_t(fp >> 32));

  CalibrationData c = d;
  c.key.pca.components[7] = std::nextafter(c.key.pca.components[7], 10.0f);
  EXPECT_NE(compute_fingerprint(c), fp) << "one ulp of a key component";
  c = d;
  c.value.pca.mean[3] += 1.0f;
  EXPECT_NE(compute_fingerprint(c), fp) << "value mean";
  c = d;
  std::swap(c.key.pca, c.value.pca);
  EXPECT_NE(compute_fingerprint(c), fp) << "keys and values swapped";
  c = d;
  c.shape.rope.theta = 500000.0;
  EXPECT_NE(compute_fingerprint(c), fp) << "rope theta";
  // Allocations and tables are not part of the identity: re-planning keeps containers decodable.
  c = d;
  c.key.allocations.clear();
  c.key.table.residual_error += 1.0;
  c.model_name = "renamed";
  EXPECT_EQ(compute_fingerprint(c), fp);
}

TEST(CalibrationFile, FlippedByteInEachSectionIsAChecksumMismatch) {
  auto bytes = serialize_calibration(tiny_calibration());
  ASSERT_TRUE(bytes.is_ok());
  for (const SectionSpan& s : sections(*bytes)) {
    for (size_t at : {s.payload, s.payload + s.length / 2, s.payload + s.length - 1}) {
      std::vector<uint8_t> f = *bytes;
      f[at] ^= 0x10;
      EXPECT_EQ(parse_code(f), StatusCode::kChecksumMismatch) << s.tag << " at " << at;
    }
    std::vector<uint8_t> f = *bytes;
    f[s.header + 12] ^= 1;  // the stored CRC itself
    EXPECT_EQ(parse_code(f), StatusCode::kChecksumMismatch) << s.tag;
  }
}

TEST(CalibrationFile, HeaderDamage) {
  auto bytes = serialize_calibration(tiny_calibration());
  ASSERT_TRUE(bytes.is_ok());
  std::vector<uint8_t> f = *bytes;
  f[1] = 'X';
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "bad magic";
  f = *bytes;
  f[8] = 3;
  EXPECT_EQ(parse_code(f), StatusCode::kUnsupported) << "future version";
  f = *bytes;
  f[8] = 0;
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "version 0";
  f = *bytes;
  for (uint8_t n : {6, 7, 8, 10}) {
    f[12] = n;
    EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "section count " << int(n);
  }
  f = *bytes;
  f.push_back(0);
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "trailing byte";
  // A hostile length: refused before anything is allocated.
  f = *bytes;
  const auto spans = sections(f);
  const uint64_t huge = ~uint64_t(0) - 7;
  std::memcpy(&f[spans[1].header + 4], &huge, 8);
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt);
  f = *bytes;
  std::memcpy(&f[spans[2].header], "KXAB", 4);
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << "unknown section tag";
  EXPECT_EQ(parse_calibration(nullptr, 0).status().code(), StatusCode::kCorrupt);
}

TEST(CalibrationFile, TruncationAtEveryOffsetIsRefused) {
  auto bytes = serialize_calibration(tiny_calibration());
  ASSERT_TRUE(bytes.is_ok());
  const size_t n = bytes->size();
  const size_t step = std::max<size_t>(1, n / 3000);
  for (size_t len = 0; len < n; len += (len < 200 ? 1 : step)) {
    const StatusCode c = parse_calibration(bytes->data(), len).status().code();
    EXPECT_TRUE(c == StatusCode::kCorrupt || c == StatusCode::kChecksumMismatch) << "length " << len;
  }
}

TEST(CalibrationFile, SemanticDamageBehindValidChecksums) {
  auto bytes = serialize_calibration(tiny_calibration());
  ASSERT_TRUE(bytes.is_ok());
  const auto spans = sections(*bytes);
  auto edited = [&](size_t section, size_t offset, const void* v, size_t n) {
    std::vector<uint8_t> f = *bytes;
    std::memcpy(&f[spans[section].payload + offset], v, n);
    fix_crc(f, spans[section]);
    return parse_code(f);
  };
  const uint64_t rank_too_big = 65, rank_zero = 0;
  EXPECT_EQ(edited(1, 8, &rank_too_big, 8), StatusCode::kCorrupt) << "rank > p";
  EXPECT_EQ(edited(1, 8, &rank_zero, 8), StatusCode::kCorrupt) << "rank 0";
  const float nan = std::nanf("");
  EXPECT_EQ(edited(1, 32, &nan, 4), StatusCode::kCorrupt) << "NaN in the mean";
  // Allocation of ratio 4 (first in KALC): u32 count, f64 ratio, i64 budget, i64 bits, f64 error, u32 n_groups,
  // then groups of 10 bytes; the second group's first_component is at 4 + 36 + 10.
  const uint32_t gap = 1000;
  EXPECT_EQ(edited(3, 4 + 36 + 10, &gap, 4), StatusCode::kCorrupt) << "groups not contiguous";
  const uint8_t bad_width = 9;
  EXPECT_EQ(edited(3, 4 + 36 + 9, &bad_width, 1), StatusCode::kCorrupt) << "width 9";
  const double negative = -1.0;
  EXPECT_EQ(edited(3, 4, &negative, 8), StatusCode::kCorrupt) << "negative ratio";
  const int64_t tiny_budget = 1;
  EXPECT_EQ(edited(3, 12, &tiny_budget, 8), StatusCode::kCorrupt) << "over budget";
  const uint32_t many_groups = 0x7fffffff;
  EXPECT_EQ(edited(3, 36, &many_groups, 4), StatusCode::kCorrupt) << "group count beyond the section";
  const int32_t bad_size = 3;
  EXPECT_EQ(edited(2, 24 + 4, &bad_size, 4), StatusCode::kCorrupt) << "group sizes 1, 3, 16";
  const char* not_json = "{\"n_layers\": [";
  EXPECT_EQ(edited(0, 0, not_json, std::strlen(not_json)), StatusCode::kCorrupt) << "META not JSON";
}

TEST(CalibrationFile, RandomMutationsNeverCrashOrPass) {
  auto bytes = serialize_calibration(tiny_calibration());
  ASSERT_TRUE(bytes.is_ok());
  std::mt19937_64 rng(77);
  for (int trial = 0; trial < 1500; ++trial) {
    std::vector<uint8_t> f = *bytes;
    const int n_flips = 1 + int(rng() % 4);
    for (int k = 0; k < n_flips; ++k) f[rng() % f.size()] ^= uint8_t(1 + rng() % 255);
    if (f == *bytes) continue;
    EXPECT_FALSE(parse_calibration(f.data(), f.size()).is_ok()) << "trial " << trial;
  }
}

TEST(CalibrationFile, SerializeRefusesInconsistentData) {
  CalibrationData d = tiny_calibration();
  d.key.pca.components.pop_back();
  EXPECT_EQ(serialize_calibration(d).status().code(), StatusCode::kInvalidArgument);
  d = tiny_calibration();
  d.value.allocations.pop_back();
  EXPECT_EQ(serialize_calibration(d).status().code(), StatusCode::kInvalidArgument);
}

// ---- the pipeline ------------------------------------------------------------------------------

CalibrateOptions real_options() {
  CalibrateOptions o;
  o.ratios = {8, 16, 20, 32, 64};
  return o;
}

const Result<CalibrationData>& small_calibration() {
  static const Result<CalibrationData> r =
      calibrate_files({testing::shared_kvcache("small-calib.safetensors")}, real_options());
  return r;
}

TEST(Calibrate, SmallCalibAllocationsWithinBudgetAndOrdered) {
  const auto& r = small_calibration();
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const CalibrationData& d = *r;
  EXPECT_EQ(d.shape.n_features(), 2048);
  EXPECT_EQ(d.n_calibration_tokens, 512 - 4 - 128);
  EXPECT_EQ(d.ratios, real_options().ratios);
  EXPECT_FALSE(d.model_name.empty());
  EXPECT_EQ(d.fingerprint, compute_fingerprint(d));
  for (const StreamCalibration* s : {&d.key, &d.value}) {
    // 380 centred tokens span at most 379 directions: the rank is capped there, not at p = 2048.
    EXPECT_EQ(s->pca.rank, 512 - 4 - 128 - 1);
    ASSERT_EQ(s->allocations.size(), 5u);
    double prev = -1.0;
    for (size_t i = 0; i < 5; ++i) {
      const Allocation& a = s->allocations[i];
      EXPECT_EQ(a.target_ratio, d.ratios[i]);
      EXPECT_EQ(a.budget_bits_per_token, budget_bits_for_ratio(2048, d.ratios[i]));
      EXPECT_LE(a.bits_per_token, a.budget_bits_per_token);
      EXPECT_GT(a.bits_per_token, a.budget_bits_per_token * 9 / 10);
      EXPECT_GT(a.n_kept_components(), 0);
      EXPECT_GT(a.predicted_error, prev) << "ratio " << d.ratios[i];
      prev = a.predicted_error;
    }
    // At 8x the predicted error is a small fraction of the signal.
    EXPECT_LT(s->allocations[0].predicted_error, 0.02 * mean_squared_norm(s->pca));
    EXPECT_LT(s->allocations[4].predicted_error, mean_squared_norm(s->pca));
  }
  auto bytes = serialize_calibration(d);
  ASSERT_TRUE(bytes.is_ok());
  auto back = parse_calibration(bytes->data(), bytes->size());
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  expect_same(d, *back);
}

TEST(Calibrate, PlanAllocation) {
  const auto& r = small_calibration();
  ASSERT_TRUE(r.is_ok());
  const StreamCalibration& k = r->key;
  AllocatorOptions ao;
  auto stored = plan_allocation(k, 2048, 20.0, ao);
  ASSERT_TRUE(stored.is_ok());
  EXPECT_EQ(stored->groups, k.allocations[2].groups);
  auto planned = plan_allocation(k, 2048, 24.0, ao);
  ASSERT_TRUE(planned.is_ok());
  EXPECT_EQ(planned->target_ratio, 24.0);
  EXPECT_LE(planned->bits_per_token, budget_bits_for_ratio(2048, 24.0));
  EXPECT_GT(planned->predicted_error, k.allocations[2].predicted_error);
  EXPECT_LT(planned->predicted_error, k.allocations[3].predicted_error);
  // Re-planning a calibrated ratio from the table gives the stored allocation back.
  auto replanned = allocate(k.table, budget_bits_for_ratio(2048, 20.0), ao);
  ASSERT_TRUE(replanned.is_ok());
  EXPECT_EQ(replanned->groups, k.allocations[2].groups);
  EXPECT_EQ(plan_allocation(k, 2048, 0.0, ao).status().code(), StatusCode::kInvalidArgument);
}

TEST(Calibrate, OtherShapeIsAMismatchNamingTheFile) {
  const std::string dir = testing::temp_dir();
  ModelShape other;
  other.n_layers = 8;
  other.n_kv_heads = 2;
  other.head_dim = 64;  // not the reference model's 128
  other.rope.theta = 100000.0;
  const std::string path = dir + "/other-shape.safetensors";
  ASSERT_TRUE(write_cache(testing::synthetic_cache(other, 200, 5, DType::kBF16), path).is_ok());
  CalibrateOptions o = real_options();
  auto r = calibrate_files({testing::shared_kvcache("small-calib.safetensors"), path}, o);
  ASSERT_EQ(r.status().code(), StatusCode::kMismatch) << r.status().to_string();
  EXPECT_NE(r.status().message().find("other-shape.safetensors"), std::string::npos) << r.status().message();

  auto acc = CalibrationAccumulator::create(tiny_shape(), "x", tiny_options());
  ASSERT_TRUE(acc.is_ok());
  EXPECT_EQ(acc->add(testing::synthetic_cache(other, 50, 1), "mine").code(), StatusCode::kMismatch);
}

TEST(Calibrate, NoCompressibleTokensIsInvalidArgument) {
  CalibrateOptions o = real_options();
  o.n_window_tokens = 600;  // more than the file holds
  auto r = calibrate_files({testing::shared_kvcache("small-calib.safetensors")}, o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  EXPECT_EQ(calibrate_files({}, o).status().code(), StatusCode::kInvalidArgument);
  o = real_options();
  o.group_sizes = {4, 6};
  EXPECT_EQ(calibrate_files({testing::shared_kvcache("small-calib.safetensors")}, o).status().code(),
            StatusCode::kInvalidArgument);
}

// The in-memory builder and the file path see the same tokens and give the same calibration.
TEST(Calibrate, BuilderEqualsFiles) {
  const std::string dir = testing::temp_dir();
  std::vector<std::string> paths;
  for (uint64_t seed : {1, 2, 3}) {
    paths.push_back(dir + "/c" + std::to_string(seed) + ".safetensors");
    ASSERT_TRUE(write_cache(testing::synthetic_cache(tiny_shape(), 120, seed), paths.back()).is_ok());
  }
  auto from_files = calibrate_files(paths, tiny_options());
  ASSERT_TRUE(from_files.is_ok()) << from_files.status().to_string();
  CalibrationData built = tiny_calibration();
  built.model_name = from_files->model_name;
  expect_same(built, *from_files);
  EXPECT_EQ(from_files->n_calibration_tokens, 3 * (120 - 2 - 8));
}

// p above exact_max_features: randomized PCA over re-read files, close to the exact basis.
TEST(Calibrate, RandomizedPathMatchesExactTopComponents) {
  const std::string dir = testing::temp_dir();
  std::vector<std::string> paths;
  for (uint64_t seed : {4, 5}) {
    paths.push_back(dir + "/r" + std::to_string(seed) + ".safetensors");
    ASSERT_TRUE(write_cache(testing::synthetic_cache(tiny_shape(), 300, seed), paths.back()).is_ok());
  }
  CalibrateOptions o = tiny_options();
  auto exact = calibrate_files(paths, o);
  o.exact_max_features = 32;
  o.rank_cap = 40;
  std::vector<std::string> stages;
  o.progress = [&](double, const std::string& s) {
    if (stages.empty() || stages.back() != s) stages.push_back(s);
  };
  auto rnd = calibrate_files(paths, o);
  ASSERT_TRUE(exact.is_ok() && rnd.is_ok()) << rnd.status().to_string();
  EXPECT_EQ(rnd->key.pca.rank, 40);
  EXPECT_EQ(rnd->n_calibration_tokens, exact->n_calibration_tokens);
  EXPECT_EQ(stages, (std::vector<std::string>{"covariance", "pca", "distortion", "allocation", "ecsq"}));
  for (int s = 0; s < 2; ++s) {
    const PcaBasis& a = s == 0 ? exact->key.pca : exact->value.pca;
    const PcaBasis& b = s == 0 ? rnd->key.pca : rnd->value.pca;
    EXPECT_NEAR(a.total_variance, b.total_variance, 1e-4 * a.total_variance);
    for (int j = 0; j < 8; ++j) EXPECT_NEAR(a.variance[size_t(j)], b.variance[size_t(j)], 1e-3 * a.variance[0]) << j;
    for (const Allocation& al : (s == 0 ? rnd->key : rnd->value).allocations) {
      EXPECT_LE(al.bits_per_token, al.budget_bits_per_token);
      EXPECT_LE(al.n_kept_components(), 40);
    }
  }
  auto bytes = serialize_calibration(*rnd);
  ASSERT_TRUE(bytes.is_ok());
  EXPECT_TRUE(parse_calibration(bytes->data(), bytes->size()).is_ok());
}

}  // namespace
}  // namespace kvtc
