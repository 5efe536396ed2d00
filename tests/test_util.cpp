#include "test_util.hpp"

#include <sys/wait.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>

#include "core/ecsq.hpp"
#include "core/ecsq_inspect.hpp"
#include "core/reference_decoder.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"
#include "entropy/rans_encode.hpp"
#include "kvtc/kvtc.hpp"
#include "util/half.hpp"

namespace kvtc::testing {

std::string shared_dir() { return KVTC_SHARED_DIR; }
std::string repo_data(const std::string& name) { return std::string(KVTC_SOURCE_DIR) + "/data/" + name; }
std::string shared_kvcache(const std::string& name) { return shared_dir() + "/kvcache/" + name; }

int run_command(const std::string& command, std::string* out, std::string* err) {
  const std::string dir = temp_dir();
  const int rc = std::system((command + " >" + dir + "/out 2>" + dir + "/err").c_str());
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  *out = slurp(dir + "/out");
  *err = slurp(dir + "/err");
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

const KVCache& repo_cache(const std::string& name) {
  static std::map<std::string, KVCache> caches;
  auto it = caches.find(name);
  if (it == caches.end()) {
    auto c = read_cache(repo_data(name));
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    it = caches.emplace(name, c.is_ok() ? c.value() : KVCache{}).first;
  }
  return it->second;
}

CacheView block_view(const KVCache& c, int64_t a, int64_t b) {
  CacheView v = CacheView::of(c);
  v.n_tokens = b - a;
  v.position_offset = c.position_offset + a;
  for (size_t l = 0; l < v.k.size(); ++l) {
    v.k[l].data = c.k[l].data() + a * c.shape.head_dim;
    v.v[l].data = c.v[l].data() + a * c.shape.head_dim;
  }
  return v;
}

KVCache synthetic_cache(const ModelShape& shape, int64_t n_tokens, uint64_t seed, DType dtype,
                        int64_t position_offset) {
  // The structure (mean and principal directions) is the same for every seed, like one model's caches;
  // the seed only draws the tokens.
  std::mt19937_64 model_rng(0x6b767463 + uint64_t(shape.n_features()));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  KVCache c;
  c.shape = shape;
  c.dtype = dtype;
  c.n_tokens = n_tokens;
  c.position_offset = position_offset;
  c.model_name = "synthetic";
  const int64_t p = shape.n_features();
  // x = mean + sum_j a_j * sigma_j * u_j with a decaying spectrum over a few random directions.
  const int n_dirs = 24;
  std::vector<std::vector<float>> dirs(2 * n_dirs, std::vector<float>(p));
  for (auto& d : dirs)
    for (auto& x : d) x = normal(model_rng) / std::sqrt(float(p));
  std::vector<float> mean(2 * p);
  for (auto& m : mean) m = 0.3f * normal(model_rng);
  c.k.assign(shape.n_layers, std::vector<float>(size_t(shape.n_kv_heads) * n_tokens * shape.head_dim));
  c.v = c.k;
  std::vector<float> row(p);
  for (int s = 0; s < 2; ++s) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t f = 0; f < p; ++f) row[f] = mean[s * p + f] + 0.05f * normal(rng);
      for (int j = 0; j < n_dirs; ++j) {
        const float a = normal(rng) * 8.0f / float(1 + j);
        for (int64_t f = 0; f < p; ++f) row[f] += a * dirs[s * n_dirs + j][f] * std::sqrt(float(p)) * 0.2f;
      }
      for (int l = 0; l < shape.n_layers; ++l)
        for (int h = 0; h < shape.n_kv_heads; ++h) {
          float* dst = s == 0 ? c.k_row(l, h, t) : c.v_row(l, h, t);
          for (int d = 0; d < shape.head_dim; ++d)
            dst[d] = row[(int64_t(l) * shape.n_kv_heads + h) * shape.head_dim + d];
        }
    }
  }
  RopeTable rope(shape.rope, shape.head_dim, position_offset, std::max<int64_t>(n_tokens, 1));
  for (int l = 0; l < shape.n_layers; ++l)
    for (int h = 0; h < shape.n_kv_heads; ++h) rope.apply(c.k_row(l, h, 0), 0, n_tokens, false);
  // Values representable in the file dtype, so file round trips are exact.
  if (dtype != DType::kF32) {
    for (auto* layers : {&c.k, &c.v})
      for (auto& layer : *layers)
        for (auto& x : layer) x = dtype == DType::kBF16 ? bf16_to_f32(f32_to_bf16(x)) : round_to_f16(x);
  }
  c.sync_metadata();
  return c;
}

Group group(uint32_t first, uint32_t n, GroupKind kind, int width) {
  Group g;
  g.first_component = first;
  g.n_components = n;
  g.kind = kind;
  g.width_bits = uint8_t(width);
  return g;
}

std::vector<Group> all_kinds_groups() {
  std::vector<Group> g;
  uint32_t c = 0;
  g.push_back(group(c, 2, GroupKind::kFloat16, 16)), c += 2;
  for (int w = 8; w >= 1; --w) {
    g.push_back(group(c, 2, GroupKind::kInt, w)), c += 2;
    g.push_back(group(c, 2, GroupKind::kIntAffine, w)), c += 2;
  }
  g.push_back(group(c, 6, GroupKind::kDropped, 0)), c += 6;
  g.push_back(group(c, 16, GroupKind::kInt, 4)), c += 16;
  g.push_back(group(c, 8, GroupKind::kIntAffine, 3)), c += 8;
  return g;
}

std::vector<Group> simple_groups(uint32_t kept) {
  return {group(0, 16, GroupKind::kInt, 4), group(16, 4, GroupKind::kFloat16, 16),
          group(20, kept - 20, GroupKind::kIntAffine, 2)};
}

std::vector<float> random_orthonormal(int64_t rank, int64_t p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> b(size_t(rank * p));
  for (auto& x : b) x = normal(rng);
  for (int64_t i = 0; i < rank; ++i) {
    double* r = b.data() + i * p;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t j = 0; j < i; ++j) {
        const double* q = b.data() + j * p;
        double dot = 0;
        for (int64_t f = 0; f < p; ++f) dot += r[f] * q[f];
        for (int64_t f = 0; f < p; ++f) r[f] -= dot * q[f];
      }
    double norm = 0;
    for (int64_t f = 0; f < p; ++f) norm += r[f] * r[f];
    norm = std::sqrt(norm);
    for (int64_t f = 0; f < p; ++f) r[f] /= norm;
  }
  return std::vector<float>(b.begin(), b.end());
}

Allocation fixed_allocation(double ratio, std::vector<Group> groups) {
  Allocation a;
  a.target_ratio = ratio;
  a.groups = std::move(groups);
  for (const Group& g : a.groups) a.bits_per_token += g.bits_per_token();
  a.budget_bits_per_token = a.bits_per_token;
  return a;
}

StreamCalibration synthetic_stream(const KVCache& cache, Stream stream, int64_t rank, uint64_t seed,
                                   std::vector<Allocation> allocations) {
  const int64_t p = cache.shape.n_features();
  StreamCalibration sc;
  sc.pca.n_features = p;
  sc.pca.rank = rank;
  sc.pca.mean.assign(size_t(p), 0.0f);
  RopeTable rope(cache.shape.rope, cache.shape.head_dim, cache.position_offset, cache.n_tokens);
  std::vector<float> x(size_t(cache.n_tokens * p));
  gather_token_vectors(cache, stream, 0, cache.n_tokens, stream == Stream::kKey ? &rope : nullptr, x.data());
  for (int64_t t = 0; t < cache.n_tokens; ++t)
    for (int64_t f = 0; f < p; ++f) sc.pca.mean[size_t(f)] += x[size_t(t * p + f)] / float(cache.n_tokens);
  sc.pca.components = random_orthonormal(rank, p, seed);
  sc.pca.variance.assign(size_t(rank), 1.0);
  sc.pca.total_variance = double(rank);
  sc.pca.n_samples = cache.n_tokens;
  sc.allocations = std::move(allocations);
  return sc;
}

CalibrationData synthetic_calibration(const KVCache& cache, int64_t rank, std::vector<double> ratios,
                                      std::vector<Allocation> key_allocations,
                                      std::vector<Allocation> value_allocations, int n_sink, int n_window) {
  CalibrationData cal;
  cal.shape = cache.shape;
  cal.model_name = "test";
  cal.n_sink_tokens = n_sink;
  cal.n_window_tokens = n_window;
  cal.n_calibration_tokens = cache.n_tokens;
  cal.ratios = std::move(ratios);
  cal.key = synthetic_stream(cache, Stream::kKey, rank, 11, std::move(key_allocations));
  cal.value = synthetic_stream(cache, Stream::kValue, rank, 12, std::move(value_allocations));
  cal.fingerprint = 0x1234abcd5678ef00ull;
  return cal;
}

CalibrationData calibration_8_20(const KVCache& cache, int64_t rank, int n_sink, int n_window) {
  return synthetic_calibration(cache, rank, {8, 20},
                               {fixed_allocation(8, all_kinds_groups()), fixed_allocation(20, simple_groups(40))},
                               {fixed_allocation(8, simple_groups(52)), fixed_allocation(20, all_kinds_groups())},
                               n_sink, n_window);
}

CalibrationData compute_small_calibration_with_ecsq() {
  CalibrateOptions o;
  o.ratios = {8, 16, 20, 32};
  auto c = calibrate({repo_data("small-calib.safetensors")}, o);
  if (!c.is_ok()) throw std::runtime_error(c.status().to_string());
  if (c->data().key.ecsq.empty() || c->data().value.ecsq.empty())
    throw std::runtime_error("calibrate() learnt no ECSQ models");
  return c->data();
}

namespace {

// The fixture file's calibration when it exists and was written after this executable was linked.
std::optional<CalibrationData> fresh_fixture() {
  if (!fixture_is_fresh(small_calibration_fixture_path())) return std::nullopt;
  auto c = Calibration::load(small_calibration_fixture_path());
  if (!c.is_ok()) return std::nullopt;  // damaged or half-written by hand: compute instead
  return c->data();
}

}  // namespace

const CalibrationData& small_calibration_with_ecsq() {
  static const CalibrationData data = [] {
    if (auto f = fresh_fixture()) return std::move(*f);
    return compute_small_calibration_with_ecsq();
  }();
  return data;
}

SquaredError squared_error(const KVCache& a, const KVCache& b, bool keys, int64_t t0, int64_t t1) {
  SquaredError e;
  for (int l = 0; l < a.shape.n_layers; ++l)
    for (int h = 0; h < a.shape.n_kv_heads; ++h)
      for (int64_t t = t0; t < t1; ++t)
        for (int d = 0; d < a.shape.head_dim; ++d) {
          const double x = keys ? a.k_row(l, h, t)[d] : a.v_row(l, h, t)[d];
          const double y = keys ? b.k_row(l, h, t)[d] : b.v_row(l, h, t)[d];
          e.error += (x - y) * (x - y);
          e.norm += x * x;
        }
  return e;
}

OutlierCase outlier_case(int64_t n_tokens, uint64_t seed) {
  ModelShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 2;
  shape.head_dim = 16;
  shape.rope.theta = 10000;
  OutlierCase o;
  o.cache = synthetic_cache(shape, n_tokens, seed);
  o.cal = calibration_8_20(o.cache, 64, 4, 16);
  add_synthetic_ecsq_models(o.cal, o.cache, 3000, seed + 1);
  for (int l = 0; l < shape.n_layers; ++l)
    for (int h = 0; h < shape.n_kv_heads; ++h)
      for (int d = 0; d < shape.head_dim; ++d) {
        o.cache.k_row(l, h, 50)[d] *= 1e4f;
        o.cache.v_row(l, h, 50)[d] *= 1e4f;
        o.cache.k_row(l, h, 51)[d] *= 40.0f;
        o.cache.v_row(l, h, 51)[d] *= 40.0f;
      }
  return o;
}

std::vector<float> project_tokens(const KVCache& cache, const StreamCalibration& sc, Stream stream, int64_t t0,
                                  int64_t n) {
  const int64_t p = cache.shape.n_features(), rank = sc.pca.rank;
  RopeTable rope(cache.shape.rope, cache.shape.head_dim, cache.position_offset, cache.n_tokens);
  std::vector<float> x(size_t(n * p)), coef(size_t(n * rank));
  gather_token_vectors(cache, stream, t0, n, stream == Stream::kKey ? &rope : nullptr, x.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < rank; ++j) {
      double acc = 0;
      for (int64_t f = 0; f < p; ++f)
        acc += double(x[size_t(t * p + f)] - sc.pca.mean[size_t(f)]) * sc.pca.components[size_t(j * p + f)];
      coef[size_t(t * rank + j)] = float(acc);
    }
  return coef;
}

void add_synthetic_ecsq_models(CalibrationData& cal, const KVCache& cache, int64_t n_samples, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int s = 0; s < 2; ++s) {
    StreamCalibration& sc = s == 0 ? cal.key : cal.value;
    const int64_t rank = sc.pca.rank;
    const std::vector<float> seen = project_tokens(cache, sc, Stream(s), 0, cache.n_tokens);
    std::vector<float> coef(size_t(n_samples * rank));
    for (int64_t j = 0; j < rank; ++j) {
      double var = 0;
      for (int64_t t = 0; t < cache.n_tokens; ++t) var += double(seen[size_t(t * rank + j)]) * seen[size_t(t * rank + j)];
      const double b = std::sqrt(var / double(cache.n_tokens) / 2.0) + 1e-6;  // Laplacian scale: variance 2 b^2
      for (int64_t i = 0; i < n_samples; ++i) {
        const double u = uniform(rng) - 0.5;
        double c = -b * (u < 0 ? -1.0 : 1.0) * std::log(1.0 - 2.0 * std::fabs(u));
        if (uniform(rng) < 1.0 / 300) c *= 20.0 + 60.0 * uniform(rng);
        coef[size_t(i * rank + j)] = float(c);
      }
    }
    EcsqLearnOptions o;
    o.n_threads = 1;
    auto m = learn_ecsq_model(coef.data(), n_samples, rank, cache.shape.n_features(), o);
    if (!m.is_ok()) std::abort();
    sc.ecsq = std::move(m).value();
  }
}

StatusCode decode_code_both(const Calibration& cal, const std::vector<uint8_t>& bytes, const DecodeOptions& o) {
  auto fast = decode(cal, bytes.data(), bytes.size(), o);
  auto ref = reference_decode(cal.data(), bytes.data(), bytes.size());
  EXPECT_EQ(fast.is_ok(), ref.is_ok()) << fast.status().to_string() << " vs " << ref.status().to_string();
  return fast.status().code();
}

void expect_truncations_rejected(const std::vector<uint8_t>& full,
                                 const std::function<StatusCode(const std::vector<uint8_t>&)>& decode_code,
                                 size_t dense, size_t stride) {
  for (size_t n = 0; n < full.size(); n += (n < dense ? 1 : stride)) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + long(n));
    const StatusCode c = decode_code(cut);
    ASSERT_TRUE(c == StatusCode::kCorrupt || c == StatusCode::kChecksumMismatch) << "length " << n;
  }
}

std::vector<uint8_t> with_header(const std::vector<uint8_t>& full, size_t payload_offset,
                                 const ContainerHeader& header) {
  std::vector<uint8_t> bytes = serialize_container_header(header);
  bytes.insert(bytes.end(), full.begin() + long(payload_offset), full.end());
  return bytes;
}

int64_t expect_codes_chunks_reencode(const CalibrationData& cal, const std::vector<uint8_t>& container,
                                     int expected_lanes) {
  auto chunks = ecsq_container_rans_chunks(cal, container.data(), container.size());
  auto parsed = parse_container(container.data(), container.size());
  EXPECT_TRUE(chunks.is_ok()) << chunks.status().to_string();
  EXPECT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  if (!chunks.is_ok() || !parsed.is_ok()) return -1;
  EXPECT_GT(chunks->size(), 2u);
  int64_t more_runs = 0;
  for (const EcsqChunkRans& c : *chunks) {
    if (expected_lanes > 0) {
      EXPECT_EQ(c.n_lanes, expected_lanes);
    }
    more_runs += c.runs.size() > size_t(parsed->header.chunks[c.chunk_index].n_items);
    std::vector<uint8_t> again;
    EXPECT_TRUE(rans_encode(c.symbols.data(), c.symbols.size(), c.runs.data(), c.runs.size(), c.n_lanes, again).is_ok());
    EXPECT_EQ(again, c.rans_bytes) << "chunk " << c.chunk_index;
  }
  return more_runs;
}

}  // namespace kvtc::testing
