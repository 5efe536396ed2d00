#include "core/calibrate.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "core/calibrate_ecsq.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"
#include "util/status_macros.hpp"

namespace kvtc {
namespace {

constexpr int64_t kGatherTokens = 256;  // tokens gathered at a time: memory stays 2 * 256 * p floats
constexpr uint64_t kReservoirSeed = 0x6b767463616c6962ull;

// Progress bands of the whole calibration.
constexpr double kDataEnd = 0.6, kPcaEnd = 0.75, kDistortionEnd = 0.9, kAllocationEnd = 0.93;

void report(const CalibrateOptions& o, double fraction, const char* stage) {
  if (o.progress) o.progress(std::clamp(fraction, 0.0, 1.0), stage);
}

AllocatorOptions allocator_options(const CalibrateOptions& o) {
  AllocatorOptions a;
  a.group_sizes = o.group_sizes;
  a.max_samples = o.max_allocation_samples;
  a.n_threads = o.n_threads;
  return a;
}

// A uniform sample of up to `capacity` tokens from a stream of unknown length (Vitter's algorithm R),
// with a fixed seed so that a calibration is reproducible. Keeps the key and value rows of each token,
// and its fold tag (FoldAccumulator::tag) for the out-of-fold ECSQ statistics.
class Reservoir {
 public:
  Reservoir(int64_t capacity, int64_t p) : capacity_(capacity), p_(p) {}
  void offer(const float* key_row, const float* value_row, uint8_t tag = 0) {
    int64_t slot = seen_;
    if (seen_ >= capacity_) {
      slot = int64_t(next_u64() % uint64_t(seen_ + 1));
      if (slot >= capacity_) slot = -1;
    } else {
      if (seen_ == 0) {  // exactly the capacity, not a doubling vector's up-to-twice
        keys_.reserve(size_t(capacity_ * p_));
        values_.reserve(size_t(capacity_ * p_));
      }
      keys_.resize(size_t((seen_ + 1) * p_));
      values_.resize(size_t((seen_ + 1) * p_));
      tags_.push_back(0);
    }
    ++seen_;
    if (slot < 0) return;
    tags_[size_t(slot)] = tag;
    std::memcpy(&keys_[size_t(slot * p_)], key_row, sizeof(float) * size_t(p_));
    std::memcpy(&values_[size_t(slot * p_)], value_row, sizeof(float) * size_t(p_));
  }
  int64_t size() const { return std::min(seen_, capacity_); }
  const std::vector<float>& rows(Stream s) const { return s == Stream::kKey ? keys_ : values_; }
  const std::vector<uint8_t>& tags() const { return tags_; }

 private:
  uint64_t next_u64() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int64_t capacity_, p_;
  int64_t seen_ = 0;
  uint64_t state_ = kReservoirSeed;
  std::vector<float> keys_, values_;
  std::vector<uint8_t> tags_;
};

// The tokens of a cache that calibration uses: [n_sink, n_tokens - n_window).
std::pair<int64_t, int64_t> compressible_range(const KVCache& c, const CalibrateOptions& o) {
  const int64_t first = std::min<int64_t>(o.n_sink_tokens, c.n_tokens);
  const int64_t last = std::max<int64_t>(first, c.n_tokens - o.n_window_tokens);
  return {first, last};
}

// Calls fn(key_rows, value_rows, n) on batches of the compressible tokens; keys with RoPE removed.
// Either stream may be skipped (its pointer is then null).
template <typename Fn>
void for_each_batch(const KVCache& c, const CalibrateOptions& o, bool keys, bool values, std::vector<float>& kbuf,
                    std::vector<float>& vbuf, Fn&& fn) {
  const auto [first, last] = compressible_range(c, o);
  if (last <= first) return;
  const int64_t p = c.shape.n_features();
  const RopeTable unrope(c.shape.rope, c.shape.head_dim, c.position_offset, c.n_tokens);
  if (keys) kbuf.resize(size_t(kGatherTokens * p));
  if (values) vbuf.resize(size_t(kGatherTokens * p));
  for (int64_t t0 = first; t0 < last; t0 += kGatherTokens) {
    const int64_t n = std::min(kGatherTokens, last - t0);
    if (keys) gather_token_vectors(c, Stream::kKey, t0, n, &unrope, kbuf.data());
    if (values) gather_token_vectors(c, Stream::kValue, t0, n, nullptr, vbuf.data());
    fn(keys ? kbuf.data() : nullptr, values ? vbuf.data() : nullptr, n);
  }
}

Status check_cache(const KVCache& c, const ModelShape& shape, const std::string& name) {
  Status st = c.validate();
  if (!st.is_ok()) return st.with_context(name);
  if (!(c.shape == shape))
    return mismatch(name + ": model shape " + c.shape.to_string() + " differs from the calibration's " + shape.to_string());
  return Status::ok();
}

// Projects the reservoir onto a basis and measures the distortion table of that stream.
// The coefficients are left in `coef` (in-sample ECSQ statistics reuse them).
Result<DistortionTable> measure_stream(const PcaBasis& b, const std::vector<float>& rows, int64_t m,
                                       const CalibrateOptions& o, std::vector<float>& coef) {
  const int64_t p = b.n_features, r = b.rank;
  coef.assign(static_cast<size_t>(m * r), 0.0f);
  std::vector<float> xc(static_cast<size_t>(std::min(m, kGatherTokens) * p));
  double residual = 0.0;
  for (int64_t i0 = 0; i0 < m; i0 += kGatherTokens) {
    const int64_t n = std::min(kGatherTokens, m - i0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t f = 0; f < p; ++f) xc[size_t(i * p + f)] = rows[size_t((i0 + i) * p + f)] - b.mean[size_t(f)];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(n), blasint(r), blasint(p), 1.0f, xc.data(),
                blasint(p), b.components.data(), blasint(p), 0.0f, &coef[size_t(i0 * r)], blasint(r));
    // Energy outside the basis: |x - mu|^2 - |c|^2 (zero up to rounding when the rank is full).
    for (int64_t i = 0; i < n; ++i) {
      double x2 = 0.0, c2 = 0.0;
      for (int64_t f = 0; f < p; ++f) x2 += double(xc[size_t(i * p + f)]) * xc[size_t(i * p + f)];
      for (int64_t j = 0; j < r; ++j) c2 += double(coef[size_t((i0 + i) * r + j)]) * coef[size_t((i0 + i) * r + j)];
      residual += std::max(0.0, x2 - c2);
    }
  }
  residual /= double(m);
  if (r == p) residual = 0.0;  // a complete basis loses nothing: what is left is rounding noise
  AllocatorOptions ao = allocator_options(o);
  ao.max_samples = m;
  return measure_distortion(coef.data(), m, r, residual, ao);
}

// What the exact path hands over for out-of-fold ECSQ statistics (calibrate_ecsq.hpp).
struct FoldSums {
  const CovarianceAccumulator* full[2];
  const FoldAccumulator* folds;
};

// Out-of-fold coefficients come from fold bases that saw half the tokens, so they overstate what
// held-out tokens show in the full basis, as in-sample ones understate it. Each component's out-of-fold
// coefficients are scaled to in-sample + w (out-of-fold - in-sample) of second moment: their shape
// (tails, zero mass) is kept, their spread moved toward what held-out tokens show. Asymptotics (a basis
// from n tokens leaves an excess ~ 1/n on held-out tokens and an equal deficit in-sample) suggest
// w = 2/3; measured, w = 0.4 is as good on the reference model (8x: +1.46 dB against +1.49 at 2/3,
// +1.77 unscaled) and much better on SmolLM2, whose p = 5,760 is estimated from 14K tokens (8x: +2.07
// dB against +2.74 at 2/3, +3.58 unscaled); 0.25 is worse on the reference model (bench/RESULTS.md,
// "Codec 3").
constexpr double kOutOfFoldWeight = 0.4;

void rescale_out_of_fold(const std::vector<float>& in_sample, std::vector<float>& oof, int64_t m, int64_t r) {
  const double w = kOutOfFoldWeight;
  std::vector<double> in(static_cast<size_t>(r), 0.0), out(static_cast<size_t>(r), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < r; ++j) {
      in[size_t(j)] += double(in_sample[size_t(i * r + j)]) * in_sample[size_t(i * r + j)];
      out[size_t(j)] += double(oof[size_t(i * r + j)]) * oof[size_t(i * r + j)];
    }
  std::vector<float> scale(static_cast<size_t>(r), 1.0f);
  for (int64_t j = 0; j < r; ++j) {
    const double target = in[size_t(j)] + w * (out[size_t(j)] - in[size_t(j)]);
    if (out[size_t(j)] > 0.0 && target > 0.0) scale[size_t(j)] = float(std::sqrt(target / out[size_t(j)]));
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < r; ++j) oof[size_t(i * r + j)] *= scale[size_t(j)];
}

// The ECSQ model of stream s: from out-of-fold coefficients when `sums` allows, else from the in-sample
// ones (`coef`, released here). *out_of_fold tells which.
Result<EcsqModel> learn_stream_ecsq(const PcaBasis& b, int s, const Reservoir& reservoir, const FoldSums* sums,
                                    const CalibrateOptions& o, std::vector<float>& coef, bool* out_of_fold) {
  const int64_t m = reservoir.size();
  std::vector<float> oof;
  if (sums != nullptr) {
    std::vector<uint8_t> fold(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) fold[size_t(i)] = uint8_t(sums->folds->fold_of(reservoir.tags()[size_t(i)]));
    KVTC_ASSIGN_OR_RETURN(oof, out_of_fold_coefficients(b, *sums->full[s], sums->folds->fold_a(s),
                                                        reservoir.rows(Stream(s)), fold, m));
  }
  *out_of_fold = !oof.empty();
  if (*out_of_fold) {
    rescale_out_of_fold(coef, oof, m, b.rank);
    std::vector<float>().swap(coef);
  }
  const std::vector<float>& c = *out_of_fold ? oof : coef;
  return learn_ecsq_model(c.data(), m, b.rank, b.n_features, ecsq_learn_options(o));
}

// Everything after the PCA: distortion tables, allocations and ECSQ models for both streams. `sums` is
// null on the randomized path (ECSQ statistics then in-sample).
Result<CalibrationData> finish_calibration(const ModelShape& shape, const std::string& model_name,
                                           const CalibrateOptions& o, int64_t n_tokens, PcaBasis key, PcaBasis value,
                                           const Reservoir& reservoir, const FoldSums* sums) {
  CalibrationData d;
  d.shape = shape;
  d.model_name = model_name;
  d.n_sink_tokens = o.n_sink_tokens;
  d.n_window_tokens = o.n_window_tokens;
  d.n_calibration_tokens = n_tokens;
  d.ratios = o.ratios;
  d.key.pca = std::move(key);
  d.value.pca = std::move(value);
  const int64_t p = shape.n_features();
  const AllocatorOptions ao = allocator_options(o);
  StreamCalibration* streams[2] = {&d.key, &d.value};
  std::vector<float> coef[2];
  for (int s = 0; s < 2; ++s) {
    report(o, kPcaEnd + (kDistortionEnd - kPcaEnd) * 0.5 * s, "distortion");
    auto table = measure_stream(streams[s]->pca, reservoir.rows(Stream(s)), reservoir.size(), o, coef[s]);
    if (!table.is_ok()) return table.status().with_context(stream_name(Stream(s)));
    streams[s]->table = std::move(table).value();
    if (!o.learn_ecsq) std::vector<float>().swap(coef[s]);
  }
  for (int s = 0; s < 2; ++s) {
    for (size_t i = 0; i < o.ratios.size(); ++i) {
      report(o, kDistortionEnd + (kAllocationEnd - kDistortionEnd) * double(s * o.ratios.size() + i) /
                                     double(2 * o.ratios.size()),
             "allocation");
      auto a = allocate(streams[s]->table, budget_bits_for_ratio(p, o.ratios[i]), ao);
      if (!a.is_ok()) return a.status().with_context(stream_name(Stream(s)));
      a->target_ratio = o.ratios[i];
      streams[s]->allocations.push_back(std::move(a).value());
    }
  }
  if (o.learn_ecsq) {
    bool out_of_fold[2] = {false, false};
    for (int s = 0; s < 2; ++s) {
      report(o, kAllocationEnd + (1.0 - kAllocationEnd) * 0.5 * s, "ecsq");
      auto model = learn_stream_ecsq(streams[s]->pca, s, reservoir, sums, o, coef[s], &out_of_fold[s]);
      if (!model.is_ok()) return model.status().with_context(stream_name(Stream(s)));
      streams[s]->ecsq = std::move(model).value();
    }
    d.ecsq_folds = out_of_fold[0] && out_of_fold[1] ? 2 : 1;
  }
  d.fingerprint = compute_fingerprint(d);
  report(o, 1.0, o.learn_ecsq ? "ecsq" : "allocation");
  return d;
}

Status no_tokens_error(const CalibrateOptions& o, int64_t n) {
  return invalid_argument("calibration needs at least 2 compressible tokens, got " + std::to_string(n) +
                          " (each sequence loses its first " + std::to_string(o.n_sink_tokens) + " and last " +
                          std::to_string(o.n_window_tokens) + " tokens)");
}

int64_t exact_rank(const CalibrateOptions& o, int64_t p) { return o.rank_cap > 0 ? std::min(o.rank_cap, p) : p; }

Result<KVCache> read_checked(const std::string& path) {
  auto c = read_cache(path);
  if (!c.is_ok()) return c.status().with_context(path);
  Status st = c->validate();
  if (!st.is_ok()) return st.with_context(path);
  return c;
}

// The randomized path: a scan for the reservoir, then 2 + power_iterations passes per stream.
Result<CalibrationData> calibrate_randomized(const std::vector<std::string>& paths, const KVCache& first,
                                             const CalibrateOptions& o) {
  const ModelShape shape = first.shape;
  const int64_t p = shape.n_features();
  Reservoir reservoir(o.max_allocation_samples, p);
  std::vector<float> kbuf, vbuf;
  int64_t n_tokens = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    report(o, kDataEnd * 0.2 * double(i) / double(paths.size()), "covariance");
    Result<KVCache> other = i == 0 ? Result<KVCache>(KVCache{}) : read_checked(paths[i]);
    if (!other.is_ok()) return other.status();
    const KVCache& c = i == 0 ? first : *other;
    Status st = check_cache(c, shape, paths[i]);
    if (!st.is_ok()) return st;
    for_each_batch(c, o, true, true, kbuf, vbuf, [&](const float* k, const float* v, int64_t n) {
      for (int64_t t = 0; t < n; ++t) reservoir.offer(k + t * p, v + t * p);
      n_tokens += n;
    });
  }
  if (n_tokens < 2) return no_tokens_error(o, n_tokens);

  RandomizedPcaOptions ro;
  ro.rank = o.rank_cap > 0 ? std::min(o.rank_cap, p) : std::min<int64_t>(p, 8192);
  PcaBasis bases[2];
  const int n_passes = 2 + ro.power_iterations;
  for (int s = 0; s < 2; ++s) {
    int pass = 0;
    const MultiPassSource source = [&](const BatchSink& sink) -> Status {
      report(o, kDataEnd * (0.2 + 0.8 * double(s * n_passes + pass) / double(2 * n_passes)), "covariance");
      ++pass;
      for (const std::string& path : paths) {
        auto c = read_checked(path);
        if (!c.is_ok()) return c.status();
        Status st = check_cache(*c, shape, path);
        if (!st.is_ok()) return st;
        for_each_batch(*c, o, s == 0, s == 1, kbuf, vbuf,
                       [&](const float* k, const float* v, int64_t n) { sink(s == 0 ? k : v, n); });
      }
      return Status::ok();
    };
    auto b = randomized_pca(p, source, ro);
    if (!b.is_ok()) return b.status().with_context(stream_name(Stream(s)));
    bases[s] = std::move(b).value();
  }
  report(o, kPcaEnd, "pca");
  // No fold covariances here (they would cost two more sets of passes over the files): the ECSQ models
  // learn from in-sample coefficients, which understate the trailing components' variance.
  return finish_calibration(shape, first.model_name, o, n_tokens, std::move(bases[0]), std::move(bases[1]), reservoir,
                            nullptr);
}

}  // namespace

Status validate_calibrate_options(const CalibrateOptions& o) {
  for (double r : o.ratios)
    if (!(r > 0.0) || !std::isfinite(r)) return invalid_argument("ratios must be finite and > 0, got " + std::to_string(r));
  if (o.n_sink_tokens < 0 || o.n_window_tokens < 0) return invalid_argument("n_sink_tokens and n_window_tokens must be >= 0");
  if (o.group_sizes.empty()) return invalid_argument("group_sizes is empty");
  for (size_t i = 0; i < o.group_sizes.size(); ++i) {
    if (o.group_sizes[i] <= 0) return invalid_argument("group sizes must be positive");
    if (i > 0 && (o.group_sizes[i] <= o.group_sizes[i - 1] || o.group_sizes[i] % o.group_sizes[i - 1] != 0))
      return invalid_argument("group sizes must increase and each divide the next");
  }
  if (o.exact_max_features < 1) return invalid_argument("exact_max_features must be >= 1");
  if (o.max_allocation_samples < 1) return invalid_argument("max_allocation_samples must be >= 1");
  if (o.rank_cap < 0) return invalid_argument("rank_cap must be >= 0");
  if (o.learn_ecsq && (o.ecsq_prob_bits < 9 || o.ecsq_prob_bits > kRansMaxProbBits))
    return invalid_argument("ecsq_prob_bits must be in [9, " + std::to_string(kRansMaxProbBits) + "]");
  return Status::ok();
}

struct CalibrationAccumulator::Impl {
  ModelShape shape;
  std::string model_name;
  CalibrateOptions options;
  CovarianceAccumulator keys, values;
  std::optional<FoldAccumulator> folds;  // with learn_ecsq
  Reservoir reservoir;
  int64_t n_tokens = 0;
  std::vector<float> kbuf, vbuf;

  Impl(const ModelShape& s, const std::string& name, const CalibrateOptions& o)
      : shape(s),
        model_name(name),
        options(o),
        keys(s.n_features()),
        values(s.n_features()),
        reservoir(o.max_allocation_samples, s.n_features()) {
    if (o.learn_ecsq && o.ecsq_out_of_fold) folds.emplace(s.n_features());
  }
};

CalibrationAccumulator::CalibrationAccumulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CalibrationAccumulator::CalibrationAccumulator(CalibrationAccumulator&&) noexcept = default;
CalibrationAccumulator& CalibrationAccumulator::operator=(CalibrationAccumulator&&) noexcept = default;
CalibrationAccumulator::~CalibrationAccumulator() = default;

Result<CalibrationAccumulator> CalibrationAccumulator::create(const ModelShape& shape, const std::string& model_name,
                                                              const CalibrateOptions& options) {
  Status st = validate_calibrate_options(options);
  if (!st.is_ok()) return st;
  if (shape.n_layers <= 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0 || shape.head_dim % 2 != 0)
    return invalid_argument("model shape " + shape.to_string() + " is not usable");
  const int64_t p = shape.n_features();
  if (p > options.exact_max_features)
    return unsupported("streaming calibration of p = " + std::to_string(p) + " features needs the randomized PCA (p > " +
                       std::to_string(options.exact_max_features) + "), which takes files: use calibrate()");
  try {
    return CalibrationAccumulator(std::make_unique<Impl>(shape, model_name, options));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "covariance of p = " + std::to_string(p) + " features does not fit in memory");
  }
}

Status CalibrationAccumulator::add(const KVCache& cache, const std::string& source_name) {
  Impl& m = *impl_;
  Status st = check_cache(cache, m.shape, source_name);
  if (!st.is_ok()) return st;
  const int64_t p = m.shape.n_features();
  const auto [first, last] = compressible_range(cache, m.options);
  if (last > first && m.folds) m.folds->begin_cache(last - first, m.keys, m.values);
  int64_t t0 = 0;  // within the compressible range
  for_each_batch(cache, m.options, true, true, m.kbuf, m.vbuf, [&](const float* k, const float* v, int64_t n) {
    m.keys.add(k, n);
    m.values.add(v, n);
    if (m.folds) m.folds->add(k, v, t0, n);
    for (int64_t t = 0; t < n; ++t) m.reservoir.offer(k + t * p, v + t * p, m.folds ? m.folds->tag(t0 + t) : 0);
    m.n_tokens += n;
    t0 += n;
  });
  return Status::ok();
}

int64_t CalibrationAccumulator::n_tokens() const { return impl_->n_tokens; }

Result<CalibrationData> CalibrationAccumulator::finish() {
  Impl& m = *impl_;
  if (m.n_tokens < 2) return no_tokens_error(m.options, m.n_tokens);
  // n centred samples span at most n - 1 directions: components beyond that carry no calibration
  // variance and would only enlarge the file.
  const int64_t rank = std::min(exact_rank(m.options, m.shape.n_features()), m.n_tokens - 1);
  report(m.options, kDataEnd, "pca");
  auto k = m.keys.solve(rank);
  if (!k.is_ok()) return k.status().with_context("K");
  report(m.options, 0.5 * (kDataEnd + kPcaEnd), "pca");
  auto v = m.values.solve(rank);
  if (!v.is_ok()) return v.status().with_context("V");
  const FoldSums sums{{&m.keys, &m.values}, m.folds ? &*m.folds : nullptr};
  return finish_calibration(m.shape, m.model_name, m.options, m.n_tokens, std::move(k).value(), std::move(v).value(),
                            m.reservoir, m.folds ? &sums : nullptr);
}

Result<CalibrationData> calibrate_files(const std::vector<std::string>& paths, const CalibrateOptions& options) {
  Status st = validate_calibrate_options(options);
  if (!st.is_ok()) return st;
  if (paths.empty()) return invalid_argument("calibration needs at least one cache file");
  report(options, 0.0, "covariance");
  auto first = read_checked(paths[0]);
  if (!first.is_ok()) return first.status();
  if (first->shape.n_features() > options.exact_max_features) return calibrate_randomized(paths, *first, options);

  auto acc = CalibrationAccumulator::create(first->shape, first->model_name, options);
  if (!acc.is_ok()) return acc.status().with_context(paths[0]);
  {
    const KVCache c0 = std::move(first).value();  // released before the next file is read
    st = acc->add(c0, paths[0]);
    if (!st.is_ok()) return st;
  }
  for (size_t i = 1; i < paths.size(); ++i) {
    report(options, kDataEnd * double(i) / double(paths.size()), "covariance");
    auto c = read_checked(paths[i]);
    if (!c.is_ok()) return c.status();
    st = acc->add(*c, paths[i]);
    if (!st.is_ok()) return st;
  }
  return acc->finish();
}

Result<Allocation> plan_allocation(const StreamCalibration& stream, int64_t n_features, double ratio,
                                   const AllocatorOptions& options) {
  if (!(ratio > 0.0) || !std::isfinite(ratio)) return invalid_argument("ratio must be finite and > 0");
  for (const Allocation& a : stream.allocations)
    if (a.target_ratio == ratio) return a;
  auto a = allocate(stream.table, budget_bits_for_ratio(n_features, ratio), options);
  if (!a.is_ok()) return a.status();
  a->target_ratio = ratio;
  return a;
}

double mean_squared_norm(const PcaBasis& basis) {
  double sq = 0.0;
  for (float m : basis.mean) sq += double(m) * m;
  return basis.total_variance + sq;
}

}  // namespace kvtc
