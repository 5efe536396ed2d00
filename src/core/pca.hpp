// Principal component analysis of token vectors (p features each), streamed in batches so memory is
// bounded by p^2 (exact path) or p * rank (randomized path), never by the number of tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc {

// An orthonormal basis of the top `rank` principal components, with the mean that was removed.
struct PcaBasis {
  int64_t n_features = 0;          // p
  int64_t rank = 0;                // r <= p
  std::vector<float> mean;         // [p]
  std::vector<float> components;   // [r][p] row-major: component j is components[j*p .. j*p + p)
                                   // unit length; sign fixed: its largest-magnitude entry is positive
  std::vector<double> variance;    // [r] per-token variance of each component, descending
  double total_variance = 0.0;     // trace of the covariance: sum over all p features
  int64_t n_samples = 0;           // tokens the statistics came from
};

// Exact path: accumulates the mean and the covariance in double with BLAS (dsyrk), then solves with
// LAPACK's symmetric eigensolver (dsyevr). Use while p is moderate (p^2 doubles fit in memory).
class CovarianceAccumulator {
 public:
  explicit CovarianceAccumulator(int64_t n_features);
  // rows: [n_rows][p] row-major.
  void add(const float* rows, int64_t n_rows);
  int64_t n_samples() const { return n_; }
  // Keeps the top `rank` components (rank <= 0 or > p: all p). Needs at least 2 samples.
  Result<PcaBasis> solve(int64_t rank) const;
  // The PCA of the samples added here but not to `subset`, which must have been given a subset of
  // them (same p): calibration's fold B is the full accumulation minus fold A, so that a second
  // fold costs one accumulator, not two. Needs at least 2 samples left.
  Result<PcaBasis> solve_without(const CovarianceAccumulator& subset, int64_t rank) const;

 private:
  Result<PcaBasis> solve_impl(const CovarianceAccumulator* minus, int64_t rank) const;

  int64_t p_;
  int64_t n_ = 0;
  std::vector<double> sum_;     // [p]
  std::vector<double> gram_;    // [p][p], upper triangle valid: sum of x x^T
  std::vector<double> batch_;   // rows converted to double, reused across add() calls
};

// A source of token vectors that can be read several times (one pass per call). The callback receives
// batches [n_rows][p]; the pass returns its first error.
using BatchSink = std::function<void(const float* rows, int64_t n_rows)>;
using MultiPassSource = std::function<Status(const BatchSink& sink)>;

struct RandomizedPcaOptions {
  int64_t rank = 0;          // components to keep (required, <= p)
  int64_t oversample = 16;   // extra sketch columns
  int power_iterations = 2;  // subspace iterations, each one more pass over the data
  uint64_t seed = 0x6b767463;
};

// Wide path (p of tens of thousands): randomized subspace iteration (Halko, Martinsson & Tropp 2011,
// Alg. 4.4) on the centred covariance, streaming over the source 2 + power_iterations times.
// Memory: O(p * (rank + oversample)).
Result<PcaBasis> randomized_pca(int64_t n_features, const MultiPassSource& source,
                                const RandomizedPcaOptions& options);

}  // namespace kvtc
