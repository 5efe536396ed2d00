#include "core/pca.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace kvtc {
namespace {

constexpr int64_t kBatchRows = 256;  // rows converted / centred at a time

// The sign of an eigenvector is arbitrary; fix it so that bases are identical across runs and
// platforms: the entry of largest magnitude (the first of equals) is made positive.
void canonical_sign(float* v, int64_t p) {
  int64_t best = 0;
  float best_abs = -1.0f;
  for (int64_t i = 0; i < p; ++i) {
    const float a = std::fabs(v[i]);
    if (a > best_abs) {
      best_abs = a;
      best = i;
    }
  }
  if (v[best] < 0.0f)
    for (int64_t i = 0; i < p; ++i) v[i] = -v[i];
}

// Top `rank` eigenpairs of the symmetric n x n matrix `a` (column-major, lower triangle valid;
// destroyed). Eigenvalues descending in `values`, eigenvectors as rows of `vectors` [rank][n] (double).
Status top_eigenpairs(std::vector<double>& a, int64_t n, int64_t rank, std::vector<double>& values,
                      std::vector<double>& vectors) {
  std::vector<double> w(size_t(n), 0.0);
  std::vector<double> z(size_t(n) * size_t(rank), 0.0);
  std::vector<lapack_int> isuppz(size_t(2 * std::max<int64_t>(rank, 1)), 0);
  lapack_int m = 0;
  const bool all = rank == n;
  const lapack_int info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', all ? 'A' : 'I', 'L', lapack_int(n), a.data(),
                                         lapack_int(n), 0.0, 0.0, lapack_int(n - rank + 1), lapack_int(n),
                                         LAPACKE_dlamch('S'), &m, w.data(), z.data(), lapack_int(n),
                                         isuppz.data());
  if (info != 0) return internal_error("LAPACK dsyevr failed (info " + std::to_string(info) + ")");
  if (m != rank) return internal_error("LAPACK dsyevr returned " + std::to_string(m) + " eigenpairs, wanted " +
                                       std::to_string(rank));
  values.assign(size_t(rank), 0.0);
  vectors.assign(size_t(rank) * size_t(n), 0.0);
  for (int64_t j = 0; j < rank; ++j) {  // ascending from LAPACK -> descending
    const int64_t src = rank - 1 - j;
    values[size_t(j)] = w[size_t(src)];
    std::memcpy(&vectors[size_t(j * n)], &z[size_t(src * n)], sizeof(double) * size_t(n));
  }
  return Status::ok();
}

// A deterministic standard normal stream (splitmix64 + Box-Muller), identical on every platform
// (std::normal_distribution is implementation-defined).
class NormalStream {
 public:
  explicit NormalStream(uint64_t seed) : s_(seed) {}
  double next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double u1 = (double(next_u64() >> 11) + 0.5) * 0x1p-53;
    const double u2 = double(next_u64() >> 11) * 0x1p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double t = 6.283185307179586 * u2;
    spare_ = r * std::sin(t);
    have_spare_ = true;
    return r * std::cos(t);
  }

 private:
  uint64_t next_u64() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t s_;
  double spare_ = 0.0;
  bool have_spare_ = false;
};

// Replaces the p x k column-major matrix y by an orthonormal basis of its range (Householder QR).
Status orthonormalize(std::vector<float>& y, int64_t p, int64_t k) {
  std::vector<float> tau(size_t(k), 0.0f);
  lapack_int info = LAPACKE_sgeqrf(LAPACK_COL_MAJOR, lapack_int(p), lapack_int(k), y.data(), lapack_int(p), tau.data());
  if (info != 0) return internal_error("LAPACK sgeqrf failed (info " + std::to_string(info) + ")");
  info = LAPACKE_sorgqr(LAPACK_COL_MAJOR, lapack_int(p), lapack_int(k), lapack_int(k), y.data(), lapack_int(p),
                        tau.data());
  if (info != 0) return internal_error("LAPACK sorgqr failed (info " + std::to_string(info) + ")");
  return Status::ok();
}

}  // namespace

CovarianceAccumulator::CovarianceAccumulator(int64_t n_features)
    : p_(std::max<int64_t>(n_features, 0)), sum_(size_t(p_), 0.0), gram_(size_t(p_) * size_t(p_), 0.0) {}

void CovarianceAccumulator::add(const float* rows, int64_t n_rows) {
  if (n_rows <= 0 || p_ == 0) return;
  // Converted to double before the rank-k update: the covariance is a difference of large sums
  // (G - n mu mu^T), which needs the extra precision when means are large next to the spread.
  std::vector<double>& buf = batch_;
  buf.resize(size_t(std::min(n_rows, kBatchRows) * p_));
  for (int64_t r0 = 0; r0 < n_rows; r0 += kBatchRows) {
    const int64_t nb = std::min(kBatchRows, n_rows - r0);
    const float* src = rows + r0 * p_;
    for (int64_t i = 0; i < nb * p_; ++i) buf[size_t(i)] = src[i];
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t f = 0; f < p_; ++f) sum_[size_t(f)] += buf[size_t(r * p_ + f)];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, blasint(p_), blasint(nb), 1.0, buf.data(), blasint(p_),
                1.0, gram_.data(), blasint(p_));
  }
  n_ += n_rows;
}

Result<PcaBasis> CovarianceAccumulator::solve(int64_t rank) const { return solve_impl(nullptr, rank); }

Result<PcaBasis> CovarianceAccumulator::solve_without(const CovarianceAccumulator& subset, int64_t rank) const {
  if (subset.p_ != p_ || subset.n_ > n_) return invalid_argument("PCA: the subset is not one of these samples");
  return solve_impl(&subset, rank);
}

Result<PcaBasis> CovarianceAccumulator::solve_impl(const CovarianceAccumulator* minus, int64_t rank) const {
  const int64_t n_samples = n_ - (minus ? minus->n_ : 0);
  if (p_ <= 0) return invalid_argument("PCA needs at least one feature");
  if (n_samples < 2) return invalid_argument("PCA needs at least 2 samples, got " + std::to_string(n_samples));
  if (rank <= 0 || rank > p_) rank = p_;
  const double n = double(n_samples);
  auto sum = [&](int64_t f) { return minus ? sum_[size_t(f)] - minus->sum_[size_t(f)] : sum_[size_t(f)]; };
  auto gram = [&](size_t at) { return minus ? gram_[at] - minus->gram_[at] : gram_[at]; };
  std::vector<double> mean(size_t(p_), 0.0);
  for (int64_t f = 0; f < p_; ++f) mean[size_t(f)] = sum(f) / n;
  // Row-major upper triangle == column-major lower triangle, which is what LAPACK is told.
  std::vector<double> cov(gram_.size());
  double trace = 0.0;
  for (int64_t i = 0; i < p_; ++i) {
    for (int64_t j = i; j < p_; ++j) {
      const size_t at = size_t(i * p_ + j);
      cov[at] = gram(at) / n - mean[size_t(i)] * mean[size_t(j)];
    }
    trace += std::max(0.0, cov[size_t(i * p_ + i)]);
  }
  std::vector<double> values, vectors;
  Status st = top_eigenpairs(cov, p_, rank, values, vectors);
  if (!st.is_ok()) return st;

  PcaBasis b;
  b.n_features = p_;
  b.rank = rank;
  b.n_samples = n_samples;
  b.total_variance = trace;
  b.mean.assign(mean.begin(), mean.end());
  b.variance.resize(size_t(rank));
  b.components.resize(size_t(rank * p_));
  for (int64_t j = 0; j < rank; ++j) {
    b.variance[size_t(j)] = std::max(0.0, values[size_t(j)]);
    float* row = &b.components[size_t(j * p_)];
    for (int64_t f = 0; f < p_; ++f) row[f] = float(vectors[size_t(j * p_ + f)]);
    canonical_sign(row, p_);
  }
  return b;
}

Result<PcaBasis> randomized_pca(int64_t n_features, const MultiPassSource& source, const RandomizedPcaOptions& options) {
  const int64_t p = n_features;
  if (p <= 0) return invalid_argument("randomized PCA needs at least one feature");
  if (options.rank <= 0 || options.rank > p)
    return invalid_argument("randomized PCA rank must be in [1, " + std::to_string(p) + "], got " +
                            std::to_string(options.rank));
  if (options.oversample < 0 || options.power_iterations < 0)
    return invalid_argument("randomized PCA: oversample and power_iterations must be >= 0");
  const int64_t rank = options.rank;
  const int64_t k = std::min(p, rank + options.oversample);

  // The sketch basis, p x k column-major: column j is a candidate direction.
  std::vector<float> q(size_t(p) * size_t(k));
  {
    NormalStream rng(options.seed);
    for (auto& v : q) v = float(rng.next());
  }
  std::vector<float> y(q.size(), 0.0f);
  std::vector<float> xc(size_t(kBatchRows * p));
  std::vector<float> t(size_t(kBatchRows * k));
  std::vector<float> mean_f(size_t(p), 0.0f);

  // Pass 1: mean, trace and Y = sum (x - s)(x - s)^T Omega around a provisional shift s (the first
  // row), corrected afterwards to the true mean: sum (x-mu)(x-mu)^T = sum (x-s)(x-s)^T - n d d^T with
  // d = mu - s. The shift keeps float sums accurate when the mean is large next to the spread.
  std::vector<float> shift;
  std::vector<double> sum(size_t(p), 0.0);
  double sum_sq = 0.0;
  int64_t n = 0;
  auto first_pass = [&](const float* rows, int64_t n_rows) {
    for (int64_t r0 = 0; r0 < n_rows; r0 += kBatchRows) {
      const int64_t nb = std::min(kBatchRows, n_rows - r0);
      if (shift.empty()) shift.assign(rows + r0 * p, rows + r0 * p + p);
      for (int64_t r = 0; r < nb; ++r) {
        const float* src = rows + (r0 + r) * p;
        float* dst = &xc[size_t(r * p)];
        for (int64_t f = 0; f < p; ++f) {
          dst[f] = src[f] - shift[size_t(f)];
          sum[size_t(f)] += dst[f];
          sum_sq += double(dst[f]) * dst[f];
        }
      }
      cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, blasint(nb), blasint(k), blasint(p), 1.0f, xc.data(),
                  blasint(p), q.data(), blasint(p), 0.0f, t.data(), blasint(nb));
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, blasint(p), blasint(k), blasint(nb), 1.0f, xc.data(),
                  blasint(p), t.data(), blasint(nb), 1.0f, y.data(), blasint(p));
      n += nb;
    }
  };
  Status st = source(first_pass);
  if (!st.is_ok()) return st;
  if (n < 2) return invalid_argument("PCA needs at least 2 samples, got " + std::to_string(n));
  std::vector<double> d(size_t(p), 0.0);
  double d_sq = 0.0;
  for (int64_t f = 0; f < p; ++f) {
    d[size_t(f)] = sum[size_t(f)] / double(n);
    d_sq += d[size_t(f)] * d[size_t(f)];
    mean_f[size_t(f)] = float(double(shift[size_t(f)]) + d[size_t(f)]);
  }
  const double total_variance = std::max(0.0, sum_sq / double(n) - d_sq);
  for (int64_t j = 0; j < k; ++j) {
    double dot = 0.0;
    for (int64_t f = 0; f < p; ++f) dot += d[size_t(f)] * q[size_t(j * p + f)];
    const double c = double(n) * dot;
    for (int64_t f = 0; f < p; ++f) y[size_t(j * p + f)] -= float(c * d[size_t(f)]);
  }

  // Centres one sub-batch into xc and returns its rows.
  auto centre = [&](const float* rows, int64_t nb) {
    for (int64_t r = 0; r < nb; ++r) {
      const float* src = rows + r * p;
      float* dst = &xc[size_t(r * p)];
      for (int64_t f = 0; f < p; ++f) dst[f] = src[f] - mean_f[size_t(f)];
    }
  };
  auto pass_count_check = [&](int64_t seen) -> Status {
    if (seen != n)
      return invalid_argument("randomized PCA: the source gave " + std::to_string(seen) + " rows on a later pass, " +
                              std::to_string(n) + " on the first");
    return Status::ok();
  };

  // Power passes: Q = orth(Y); Y = C Q.
  for (int it = 0; it < options.power_iterations; ++it) {
    st = orthonormalize(y, p, k);
    if (!st.is_ok()) return st;
    std::swap(q, y);
    std::fill(y.begin(), y.end(), 0.0f);
    int64_t seen = 0;
    st = source([&](const float* rows, int64_t n_rows) {
      for (int64_t r0 = 0; r0 < n_rows; r0 += kBatchRows) {
        const int64_t nb = std::min(kBatchRows, n_rows - r0);
        centre(rows + r0 * p, nb);
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, blasint(nb), blasint(k), blasint(p), 1.0f, xc.data(),
                    blasint(p), q.data(), blasint(p), 0.0f, t.data(), blasint(nb));
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, blasint(p), blasint(k), blasint(nb), 1.0f,
                    xc.data(), blasint(p), t.data(), blasint(nb), 1.0f, y.data(), blasint(p));
        seen += nb;
      }
    });
    if (!st.is_ok()) return st;
    st = pass_count_check(seen);
    if (!st.is_ok()) return st;
  }
  st = orthonormalize(y, p, k);
  if (!st.is_ok()) return st;
  std::swap(q, y);
  y.clear();
  y.shrink_to_fit();

  // Final pass: B = Q^T C Q (k x k, double), then its eigenvectors rotate Q onto the components.
  std::vector<double> bmat(size_t(k) * size_t(k), 0.0);
  std::vector<double> td(size_t(kBatchRows * k));
  int64_t seen = 0;
  st = source([&](const float* rows, int64_t n_rows) {
    for (int64_t r0 = 0; r0 < n_rows; r0 += kBatchRows) {
      const int64_t nb = std::min(kBatchRows, n_rows - r0);
      centre(rows + r0 * p, nb);
      cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, blasint(nb), blasint(k), blasint(p), 1.0f, xc.data(),
                  blasint(p), q.data(), blasint(p), 0.0f, t.data(), blasint(nb));
      for (int64_t i = 0; i < nb * k; ++i) td[size_t(i)] = t[size_t(i)];
      cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, blasint(k), blasint(nb), 1.0, td.data(), blasint(nb), 1.0,
                  bmat.data(), blasint(k));
      seen += nb;
    }
  });
  if (!st.is_ok()) return st;
  st = pass_count_check(seen);
  if (!st.is_ok()) return st;
  for (auto& v : bmat) v /= double(n);

  std::vector<double> values, vectors;  // vectors: rank rows of k
  st = top_eigenpairs(bmat, k, rank, values, vectors);
  if (!st.is_ok()) return st;
  std::vector<float> u(vectors.begin(), vectors.end());  // k x rank column-major

  PcaBasis b;
  b.n_features = p;
  b.rank = rank;
  b.n_samples = n;
  b.total_variance = total_variance;
  b.mean = mean_f;
  b.variance.resize(size_t(rank));
  for (int64_t j = 0; j < rank; ++j) b.variance[size_t(j)] = std::max(0.0, values[size_t(j)]);
  // components (p x rank column-major == [rank][p] row-major) = Q U.
  b.components.assign(size_t(rank) * size_t(p), 0.0f);
  cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, blasint(p), blasint(rank), blasint(k), 1.0f, q.data(),
              blasint(p), u.data(), blasint(k), 0.0f, b.components.data(), blasint(p));
  for (int64_t j = 0; j < rank; ++j) canonical_sign(&b.components[size_t(j * p)], p);
  return b;
}

}  // namespace kvtc
