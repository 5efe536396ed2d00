// Calibration's part of codec v3: learning one ECSQ model per stream (core/ecsq.hpp) from coefficients
// of the allocation sample taken *out-of-fold*.
//
// Why out-of-fold: a basis fitted to a sample makes that sample look better than unseen caches do; with
// about two tokens per feature, in-sample coefficients understate the variance of the trailing
// components 1.6-7.5x (bench/RESULTS.md, "Codec v3 design study"), and steps, centroids and tables
// learnt from them cost up to 1.8 dB at 8x. So calibration tokens are split into two folds, a PCA is
// solved on each, and every sampled token is projected onto the basis of the fold it is not in
// (component j of a fold basis standing for component j of the full basis). Fold bases see half the
// tokens and so overstate held-out spread in turn: calibrate.cpp moves each component's out-of-fold
// spread part of the way back toward the in-sample one (kOutOfFoldWeight) before learning.
//
// Folds: cache parity when at least two caches gave tokens (caches, not tokens, are what is unseen
// later); with a single cache, the first and second half of its compressible tokens. Since a streaming
// calibration does not know whether another cache will come, fold A starts as the first half of the
// first cache and becomes that whole cache when a second one arrives (the full accumulation then holds
// exactly the first cache). Fold B is never accumulated: it is the full accumulation minus fold A.
#pragma once

#include <cstdint>
#include <vector>

#include "core/ecsq.hpp"
#include "core/pca.hpp"
#include "kvtc/kvtc.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

class FoldAccumulator {
 public:
  explicit FoldAccumulator(int64_t n_features);
  // Before the first token of a cache that has n_tokens >= 1 compressible tokens. full_k and full_v are
  // the full accumulations, holding the earlier caches only.
  void begin_cache(int64_t n_tokens, const CovarianceAccumulator& full_k, const CovarianceAccumulator& full_v);
  // Rows of tokens [t0, t0 + n) of the current cache's compressible range (both streams, [n][p]).
  void add(const float* keys, const float* values, int64_t t0, int64_t n);
  // What the reservoir records of token t of the current cache; fold_of turns it into the fold (0 A,
  // 1 B) once every cache has been seen.
  uint8_t tag(int64_t t) const { return uint8_t(((n_caches_ - 1) & 1) << 1 | (t >= half_ ? 1 : 0)); }
  int fold_of(uint8_t tag) const { return n_caches_ >= 2 ? (tag >> 1) & 1 : tag & 1; }
  const CovarianceAccumulator& fold_a(int stream) const { return stream == 0 ? keys_ : values_; }

 private:
  CovarianceAccumulator keys_, values_;
  int64_t n_caches_ = 0;
  int64_t half_ = 0;  // first token of the current cache's second half
};

// The out-of-fold coefficients [m][r] of the sampled rows [m][p] (fold[i] the fold of row i, from
// FoldAccumulator::fold_of) for the full basis' r components; empty when a fold has fewer than 2
// tokens, and the caller learns from in-sample coefficients instead.
Result<std::vector<float>> out_of_fold_coefficients(const PcaBasis& full, const CovarianceAccumulator& full_cov,
                                                    const CovarianceAccumulator& fold_a, const std::vector<float>& rows,
                                                    const std::vector<uint8_t>& fold, int64_t m);

// The projection (x - mean) . components^T of rows [m][p] onto a basis, into coef [m][rank].
void project_rows(const PcaBasis& basis, const float* rows, int64_t m, float* coef);

EcsqLearnOptions ecsq_learn_options(const CalibrateOptions& options);

}  // namespace kvtc
