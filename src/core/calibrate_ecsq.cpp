#include "core/calibrate_ecsq.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "util/status_macros.hpp"

namespace kvtc {
namespace {

constexpr int64_t kProjectRows = 256;  // rows centred at a time: memory stays 256 * p floats

// A fold basis' component j stands for the full basis' component j; eigenvector signs are arbitrary
// (each basis fixes its own by its largest entry), so orient each to agree with the full one, else a
// skewed component's table would be learnt mirrored.
void align_signs(PcaBasis& fold, const PcaBasis& full) {
  const int64_t p = full.n_features;
  for (int64_t j = 0; j < std::min(fold.rank, full.rank); ++j) {
    float* v = &fold.components[size_t(j * p)];
    const float* w = &full.components[size_t(j * p)];
    double dot = 0.0;
    for (int64_t f = 0; f < p; ++f) dot += double(v[f]) * w[f];
    if (dot < 0.0)
      for (int64_t f = 0; f < p; ++f) v[f] = -v[f];
  }
}

}  // namespace

FoldAccumulator::FoldAccumulator(int64_t n_features) : keys_(n_features), values_(n_features) {}

void FoldAccumulator::begin_cache(int64_t n_tokens, const CovarianceAccumulator& full_k,
                                  const CovarianceAccumulator& full_v) {
  if (n_caches_ == 1) {  // fold A becomes the whole first cache, which is all the full sums hold now
    keys_ = full_k;
    values_ = full_v;
  }
  ++n_caches_;
  half_ = n_tokens / 2;
}

void FoldAccumulator::add(const float* keys, const float* values, int64_t t0, int64_t n) {
  if (n <= 0 || n_caches_ == 0) return;
  int64_t end = t0 + n;  // fold A's share of the batch: [t0, end)
  if (n_caches_ == 1)
    end = std::clamp(half_, t0, t0 + n);
  else if ((n_caches_ - 1) % 2 != 0)
    return;
  if (end <= t0) return;
  keys_.add(keys, end - t0);
  values_.add(values, end - t0);
}

void project_rows(const PcaBasis& b, const float* rows, int64_t m, float* coef) {
  const int64_t p = b.n_features, r = b.rank;
  std::vector<float> xc(static_cast<size_t>(std::min(m, kProjectRows) * p));
  for (int64_t i0 = 0; i0 < m; i0 += kProjectRows) {
    const int64_t n = std::min(kProjectRows, m - i0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t f = 0; f < p; ++f) xc[size_t(i * p + f)] = rows[(i0 + i) * p + f] - b.mean[size_t(f)];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(n), blasint(r), blasint(p), 1.0f, xc.data(),
                blasint(p), b.components.data(), blasint(p), 0.0f, coef + i0 * r, blasint(r));
  }
}

Result<std::vector<float>> out_of_fold_coefficients(const PcaBasis& full, const CovarianceAccumulator& full_cov,
                                                    const CovarianceAccumulator& fold_a, const std::vector<float>& rows,
                                                    const std::vector<uint8_t>& fold, int64_t m) {
  const int64_t p = full.n_features, r = full.rank;
  const int64_t n_a = fold_a.n_samples(), n_b = full_cov.n_samples() - n_a;
  // Two tokens are what a fold PCA needs at all; with fewer the statistics stay in-sample.
  if (n_a < 2 || n_b < 2) return std::vector<float>{};
  std::vector<float> coef(static_cast<size_t>(m * r));
  PcaBasis other[2];  // other[f]: the PCA of the tokens not in fold f, at the full basis' rank
  KVTC_ASSIGN_OR_RETURN(other[0], full_cov.solve_without(fold_a, r));
  KVTC_ASSIGN_OR_RETURN(other[1], fold_a.solve(r));
  std::vector<float> buf(static_cast<size_t>(std::min(m, kProjectRows) * p));
  std::vector<float> out(static_cast<size_t>(std::min(m, kProjectRows) * r));
  std::vector<int64_t> which;
  for (int f = 0; f < 2; ++f) {
    align_signs(other[f], full);
    for (int64_t i = 0; i <= m; ++i) {
      if (i < m && fold[size_t(i)] == f) {
        which.push_back(i);
        std::memcpy(&buf[(which.size() - 1) * size_t(p)], &rows[size_t(i * p)], sizeof(float) * size_t(p));
      }
      if (which.size() == size_t(kProjectRows) || (i == m && !which.empty())) {
        project_rows(other[f], buf.data(), int64_t(which.size()), out.data());
        for (size_t w = 0; w < which.size(); ++w)
          std::memcpy(&coef[size_t(which[w] * r)], &out[w * size_t(r)], sizeof(float) * size_t(r));
        which.clear();
      }
    }
  }
  return coef;
}

EcsqLearnOptions ecsq_learn_options(const CalibrateOptions& o) {
  EcsqLearnOptions e;
  e.prob_bits = o.ecsq_prob_bits;
  e.n_threads = o.n_threads;
  return e;
}

}  // namespace kvtc
