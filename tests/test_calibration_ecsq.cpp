// Calibration's ECSQ side: the two folds (cache parity, or halves of a single cache), the models learnt
// out-of-fold on real caches, the version-2 file sections KECQ / VECQ, and version-1 files still read.
#include <gtest/gtest.h>
#include <libdeflate.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/calibrate.hpp"
#include "core/calibrate_ecsq.hpp"
#include "core/calibration_data.hpp"
#include "format/calibration_file.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

std::vector<float> random_rows(int64_t n, int64_t p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> r(static_cast<size_t>(n * p));
  for (size_t i = 0; i < r.size(); ++i) r[i] = g(rng) * float(1 + i % size_t(p)) + float(seed);
  return r;
}

void expect_same_basis(const PcaBasis& a, const PcaBasis& b) {
  ASSERT_EQ(a.mean.size(), b.mean.size());
  for (size_t f = 0; f < a.mean.size(); ++f) EXPECT_NEAR(a.mean[f], b.mean[f], 1e-4) << f;
  ASSERT_EQ(a.variance.size(), b.variance.size());
  for (size_t j = 0; j < a.variance.size(); ++j) EXPECT_NEAR(a.variance[j], b.variance[j], 1e-6 * a.variance[0]) << j;
  EXPECT_EQ(a.n_samples, b.n_samples);
}

// Fold A is the first half of the first cache until a second cache arrives, then the whole first
// cache plus every other cache after it; fold B is the rest.
TEST(CalibrationFolds, FoldAFollowsCacheParityOrHalves) {
  const int64_t p = 6;
  std::vector<std::vector<float>> caches;
  for (int64_t i = 0; i < 4; ++i) caches.push_back(random_rows(9 + i, p, uint64_t(i + 1)));
  FoldAccumulator folds(p);
  CovarianceAccumulator full_k(p), full_v(p);
  CovarianceAccumulator want_a(p), want_b(p);
  auto feed = [&](size_t c, int64_t batch) {
    const int64_t n = int64_t(caches[c].size()) / p;
    folds.begin_cache(n, full_k, full_v);
    for (int64_t t0 = 0; t0 < n; t0 += batch) {
      const int64_t m = std::min(batch, n - t0);
      const float* rows = &caches[c][size_t(t0 * p)];
      full_k.add(rows, m);
      full_v.add(rows, m);
      folds.add(rows, rows, t0, m);
    }
  };
  feed(0, 2);  // 9 tokens, in batches that straddle the middle: A = tokens 0..3
  want_a.add(caches[0].data(), 4);
  want_b.add(&caches[0][size_t(4 * p)], 5);
  expect_same_basis(*folds.fold_a(0).solve(0), *want_a.solve(0));
  expect_same_basis(*folds.fold_a(1).solve(0), *want_a.solve(0));
  expect_same_basis(*full_k.solve_without(folds.fold_a(0), 0), *want_b.solve(0));
  EXPECT_EQ(folds.fold_of(folds.tag(3)), 0);
  EXPECT_EQ(folds.fold_of(folds.tag(4)), 1);
  const uint8_t first_half = folds.tag(0), second_half = folds.tag(8);

  for (size_t c = 1; c < 4; ++c) feed(c, 3);
  CovarianceAccumulator a(p), b(p);
  for (size_t c = 0; c < 4; ++c) (c % 2 == 0 ? a : b).add(caches[c].data(), int64_t(caches[c].size()) / p);
  expect_same_basis(*folds.fold_a(0).solve(0), *a.solve(0));
  expect_same_basis(*full_k.solve_without(folds.fold_a(0), 0), *b.solve(0));
  // Tags recorded while the first cache was the only one now name its fold by parity.
  EXPECT_EQ(folds.fold_of(first_half), 0);
  EXPECT_EQ(folds.fold_of(second_half), 0);
  EXPECT_EQ(folds.fold_of(folds.tag(0)), 1);  // the fourth cache: odd
  EXPECT_EQ(full_k.solve_without(full_k, 0).status().code(), StatusCode::kInvalidArgument) << "nothing left";
}

const std::vector<std::string>& calib_paths() {
  static const std::vector<std::string> paths = {testing::shared_kvcache("small-calib.safetensors"),
                                                 testing::shared_kvcache("small-test.safetensors")};
  return paths;
}

CalibrateOptions real_options() {
  CalibrateOptions o;
  o.ratios = {8, 16};
  o.n_threads = 2;
  o.rank_cap = 256;  // keeps the eigensolves and the ECSQ learning of p = 2048 quick
  return o;
}

const Result<CalibrationData>& two_cache_calibration() {
  static const Result<CalibrationData> r = calibrate_files(calib_paths(), real_options());
  return r;
}

void expect_model_fits(const StreamCalibration& s, int64_t p) {
  ASSERT_FALSE(s.ecsq.empty());
  EXPECT_EQ(int64_t(s.ecsq.n_components()), s.pca.rank);
  EXPECT_EQ(s.ecsq.levels.back().n_kept(), 0u);
  EXPECT_LE(s.ecsq.levels.front().bits_per_token, 16.0 * double(p) / 2.0);
  EXPECT_GT(s.ecsq.levels.front().bits_per_token, 16.0 * double(p) / 256.0);
  for (size_t l = 1; l < s.ecsq.levels.size(); ++l)
    EXPECT_LE(s.ecsq.levels[l].bits_per_token, s.ecsq.levels[l - 1].bits_per_token);
}

TEST(CalibrationEcsq, RealCachesLearnOutOfFoldModels) {
  const auto& r = two_cache_calibration();
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->ecsq_folds, 2);
  expect_model_fits(r->key, r->shape.n_features());
  expect_model_fits(r->value, r->shape.n_features());

  const std::string path = testing::temp_dir() + "/ecsq.kvtcal";
  auto bytes = serialize_calibration(*r);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  auto cal = Calibration::parse(bytes->data(), bytes->size());
  ASSERT_TRUE(cal.is_ok()) << cal.status().to_string();
  ASSERT_TRUE(cal->save(path).is_ok());
  auto loaded = Calibration::load(path);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  auto again = loaded->serialize();
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(*again, *bytes);
  auto back = parse_calibration(again->data(), again->size());
  ASSERT_TRUE(back.is_ok());
  EXPECT_TRUE(back->key.ecsq == r->key.ecsq);
  EXPECT_TRUE(back->value.ecsq == r->value.ecsq);
  EXPECT_EQ(back->ecsq_folds, 2);
  EXPECT_EQ(back->fingerprint, r->fingerprint) << "the models are not part of the identity";

  auto text = inspect_json(bytes->data(), bytes->size());
  ASSERT_TRUE(text.is_ok()) << text.status().to_string();
  const auto j = nlohmann::json::parse(*text);
  EXPECT_EQ(j["ecsq_folds"], 2);
  EXPECT_EQ(j["K"]["ecsq"]["levels"], r->key.ecsq.levels.size());
  EXPECT_EQ(j["V"]["ecsq"]["prob_bits"], r->value.ecsq.prob_bits);
}

// In-sample coefficients flatter the basis: with a complete basis (rank p, so that no energy leaves it)
// and about two tokens per feature, the out-of-fold model sees more energy and, at the same bit budget,
// predicts more error than an in-sample one, which is what held-out caches show (bench/RESULTS.md).
TEST(CalibrationEcsq, OutOfFoldPredictsMoreErrorThanInSample) {
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 16;
  shape.rope.theta = 10000.0;  // p = 64
  CalibrateOptions o = real_options();
  o.rank_cap = 0;
  o.group_sizes = {1, 4, 16};
  o.n_sink_tokens = 2;
  o.n_window_tokens = 8;
  auto run = [&](bool out_of_fold) {
    o.ecsq_out_of_fold = out_of_fold;
    auto acc = CalibrationAccumulator::create(shape, "synthetic", o);
    EXPECT_TRUE(acc.is_ok());
    for (uint64_t seed : {11, 12, 13, 14}) EXPECT_TRUE(acc->add(testing::synthetic_cache(shape, 42, seed)).is_ok());
    return acc->finish();
  };
  auto oof_cal = run(true), in_cal = run(false);
  ASSERT_TRUE(oof_cal.is_ok() && in_cal.is_ok());
  ASSERT_EQ(oof_cal->key.pca.rank, 64);
  EXPECT_EQ(oof_cal->ecsq_folds, 2);
  EXPECT_EQ(in_cal->ecsq_folds, 1);
  EXPECT_EQ(in_cal->fingerprint, oof_cal->fingerprint);
  for (int s = 0; s < 2; ++s) {
    const EcsqModel& oof = s == 0 ? oof_cal->key.ecsq : oof_cal->value.ecsq;
    const EcsqModel& ins = s == 0 ? in_cal->key.ecsq : in_cal->value.ecsq;
    ASSERT_EQ(oof.levels.size(), ins.levels.size());
    EXPECT_GT(oof.levels.back().error_per_token, ins.levels.back().error_per_token) << "energy, stream " << s;
    for (double ratio : {4.0, 8.0, 16.0, 32.0}) {
      const size_t l = size_t(std::lround(std::log2(ratio / 2.0) * 32.0));  // budget 16 p / ratio in both ladders
      EXPECT_GT(oof.levels[l].error_per_token, 1.1 * ins.levels[l].error_per_token) << "stream " << s << " at " << ratio
          << ": " << oof.levels[l].error_per_token << " vs " << ins.levels[l].error_per_token;
    }
  }
}

TEST(CalibrationEcsq, SingleCacheSplitsByHalvesAndTinyFoldsFallBack) {
  CalibrateOptions o = real_options();
  auto one = calibrate_files({calib_paths()[0]}, o);
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  EXPECT_EQ(one->ecsq_folds, 2);
  expect_model_fits(one->key, one->shape.n_features());

  // Three compressible tokens: fold A would hold one. In-sample, and said so.
  ModelShape shape;
  shape.n_layers = 1;
  shape.n_kv_heads = 1;
  shape.head_dim = 8;
  shape.rope.theta = 10000.0;
  o.n_sink_tokens = 0;
  o.n_window_tokens = 0;
  o.group_sizes = {1, 4};
  auto acc = CalibrationAccumulator::create(shape, "tiny", o);
  ASSERT_TRUE(acc.is_ok());
  ASSERT_TRUE(acc->add(testing::synthetic_cache(shape, 3, 5)).is_ok());
  auto d = acc->finish();
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->ecsq_folds, 1);
  EXPECT_FALSE(d->key.ecsq.empty());

  o.learn_ecsq = false;
  acc = CalibrationAccumulator::create(shape, "tiny", o);
  ASSERT_TRUE(acc.is_ok());
  ASSERT_TRUE(acc->add(testing::synthetic_cache(shape, 40, 5)).is_ok());
  d = acc->finish();
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(d->ecsq_folds, 0);
  EXPECT_TRUE(d->key.ecsq.empty() && d->value.ecsq.empty());
  auto bytes = serialize_calibration(*d);
  ASSERT_TRUE(bytes.is_ok());
  EXPECT_EQ((*bytes)[8], 2);
  EXPECT_EQ((*bytes)[12], 7) << "no models, no ECSQ sections";
  EXPECT_TRUE(parse_calibration(bytes->data(), bytes->size()).is_ok());

  o.learn_ecsq = true;
  o.ecsq_prob_bits = 8;
  EXPECT_EQ(CalibrationAccumulator::create(shape, "tiny", o).status().code(), StatusCode::kInvalidArgument);
}

// ---- the file --------------------------------------------------------------------------------------

const CalibrationData& small_data() {
  static const CalibrationData data = [] {
    ModelShape s;
    s.n_layers = 2;
    s.n_kv_heads = 1;
    s.head_dim = 8;
    s.rope.theta = 10000.0;
    CalibrateOptions o = real_options();
    o.group_sizes = {1, 4};
    o.n_sink_tokens = 1;
    o.n_window_tokens = 2;
    auto acc = CalibrationAccumulator::create(s, "small", o);
    EXPECT_TRUE(acc.is_ok());
    for (uint64_t seed : {1, 2}) EXPECT_TRUE(acc->add(testing::synthetic_cache(s, 60, seed)).is_ok());
    auto d = acc->finish();
    EXPECT_TRUE(d.is_ok()) << d.status().to_string();
    return std::move(d).value();
  }();
  return data;
}

struct Span {
  size_t header, payload, length;
};
std::vector<Span> spans(const std::vector<uint8_t>& f) {
  std::vector<Span> out;
  for (size_t pos = 16; pos + 16 <= f.size();) {
    uint64_t len = 0;
    std::memcpy(&len, &f[pos + 4], 8);
    out.push_back({pos, pos + 16, size_t(len)});
    pos += 16 + size_t(len);
  }
  return out;
}
void fix_crc(std::vector<uint8_t>& f, const Span& s) {
  uint32_t crc = uint32_t(libdeflate_crc32(0, &f[s.header], 12));
  crc = uint32_t(libdeflate_crc32(crc, &f[s.payload], s.length));
  std::memcpy(&f[s.header + 12], &crc, 4);
}
StatusCode parse_code(const std::vector<uint8_t>& f) { return parse_calibration(f.data(), f.size()).status().code(); }

TEST(CalibrationEcsqFile, VersionOneFilesStillLoad) {
  CalibrationData d = small_data();
  d.key.ecsq = {};
  d.value.ecsq = {};
  d.ecsq_folds = 0;
  auto bytes = serialize_calibration(d);
  ASSERT_TRUE(bytes.is_ok());
  std::vector<uint8_t> v1 = *bytes;
  v1[8] = 1;  // a version-1 file is a version-2 file without the ECSQ sections
  auto back = parse_calibration(v1.data(), v1.size());
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_TRUE(back->key.ecsq.empty() && back->value.ecsq.empty());
  EXPECT_EQ(back->ecsq_folds, 0);
  EXPECT_EQ(back->fingerprint, small_data().fingerprint);

  // Version 1 knows no ECSQ sections.
  auto full = serialize_calibration(small_data());
  ASSERT_TRUE(full.is_ok());
  std::vector<uint8_t> f = *full;
  f[8] = 1;
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt);
}

TEST(CalibrationEcsqFile, DamagedEcsqSectionsAreRefused) {
  auto bytes = serialize_calibration(small_data());
  ASSERT_TRUE(bytes.is_ok());
  const std::vector<Span> s = spans(*bytes);
  ASSERT_EQ(s.size(), 9u);
  for (size_t i : {7, 8}) {
    std::vector<uint8_t> f = *bytes;
    f[s[i].payload + s[i].length / 2] ^= 4;
    EXPECT_EQ(parse_code(f), StatusCode::kChecksumMismatch) << i;
    f = *bytes;
    const uint32_t k = 1000;  // component count: must be the basis rank
    std::memcpy(&f[s[i].payload + 4], &k, 4);
    fix_crc(f, s[i]);
    EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << i;
    f = *bytes;
    std::memcpy(&f[s[i].header], "KXCQ", 4);
    EXPECT_EQ(parse_code(f), StatusCode::kCorrupt) << i;
  }
  // VECQ missing: the header still says nine.
  std::vector<uint8_t> f(bytes->begin(), bytes->begin() + ptrdiff_t(s[8].header));
  EXPECT_EQ(parse_code(f), StatusCode::kCorrupt);
  const size_t n = bytes->size();
  for (size_t len = s[7].header; len < n; len += 7) {
    const StatusCode c = parse_calibration(bytes->data(), len).status().code();
    EXPECT_TRUE(c == StatusCode::kCorrupt || c == StatusCode::kChecksumMismatch) << "length " << len;
  }
}

TEST(CalibrationEcsqFile, SerializeRefusesInconsistentModels) {
  CalibrationData d = small_data();
  d.value.ecsq = {};
  EXPECT_EQ(serialize_calibration(d).status().code(), StatusCode::kInvalidArgument) << "one stream only";
  d = small_data();
  d.key.ecsq.cells.pop_back();
  EXPECT_EQ(serialize_calibration(d).status().code(), StatusCode::kInvalidArgument) << "component count";
  d = small_data();
  d.key.ecsq.levels[0].cell[0] = uint8_t(d.key.ecsq.cells[0].size() + 1);
  EXPECT_EQ(serialize_calibration(d).status().code(), StatusCode::kInvalidArgument) << "missing cell";
}

}  // namespace
}  // namespace kvtc
