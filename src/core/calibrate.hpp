// The calibration pipeline behind kvtc::calibrate() and kvtc::CalibrationBuilder.
//
// For every cache: skip the first n_sink and last n_window tokens (they are stored exactly, so they
// are not calibrated on), gather each remaining token's keys (RoPE removed) and values across all
// layers and KV heads into one p-vector per stream, and stream them into a PCA per stream. A
// deterministic reservoir of up to max_allocation_samples tokens is kept; after the PCA it is
// projected onto each basis, the quantisation error of every candidate group is measured on those
// coefficients, and one bit allocation per requested ratio is computed from the measurements. With
// learn_ecsq, codec v3's quantiser is then learnt per stream from the reservoir's coefficients, taken
// out-of-fold on the exact path (core/calibrate_ecsq.hpp says why and how), in-sample on the
// randomized one.
//
// Memory: the exact path holds two p x p double matrices, four with learn_ecsq (fold A's); the
// randomized path (p above exact_max_features, files only) holds O(p * rank) and reads every file
// 1 + 2 * (2 + power iterations) times. Both hold the reservoir: 2 * max_allocation_samples * p floats.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/allocation.hpp"
#include "core/calibration_data.hpp"
#include "core/pca.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/kvtc.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

// Checks CalibrateOptions: ratios finite and > 0, n_sink / n_window >= 0, group sizes positive and
// each dividing the next, exact_max_features >= 1, max_allocation_samples >= 1, rank_cap >= 0.
Status validate_calibrate_options(const CalibrateOptions& options);

// Streaming calibration on the exact PCA path: caches are added one at a time (in memory or read by
// calibrate_files), finish() solves the PCA and plans the allocations. Not thread-safe.
class CalibrationAccumulator {
 public:
  // kInvalidArgument for bad options or shape; kUnsupported when p > options.exact_max_features
  // (the randomized path needs several passes over files: use calibrate_files).
  static Result<CalibrationAccumulator> create(const ModelShape& shape, const std::string& model_name,
                                               const CalibrateOptions& options);
  // Adds the compressible tokens of one cache. kMismatch (message starting with `source_name`) when
  // its shape differs from the calibration's; a cache too short to have compressible tokens adds
  // nothing and is not an error.
  Status add(const KVCache& cache, const std::string& source_name = "cache");
  int64_t n_tokens() const;
  // kInvalidArgument when fewer than 2 tokens were added in all.
  Result<CalibrationData> finish();

  CalibrationAccumulator(CalibrationAccumulator&&) noexcept;
  CalibrationAccumulator& operator=(CalibrationAccumulator&&) noexcept;
  ~CalibrationAccumulator();

 private:
  struct Impl;
  explicit CalibrationAccumulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Calibrates from cache files: exact path while p <= options.exact_max_features, randomized PCA
// (re-reading the files once per pass) above it. All files must share the first file's ModelShape
// (else kMismatch naming the file); no compressible token in any file is kInvalidArgument. The model
// name is the first file's. Progress goes to options.progress with the stages "covariance", "pca",
// "distortion", "allocation" and, with learn_ecsq, "ecsq".
Result<CalibrationData> calibrate_files(const std::vector<std::string>& paths, const CalibrateOptions& options);

// The allocation for `ratio`: the stored one when that ratio was calibrated (exact match), else one
// planned now from the stored distortion table with `options` (target_ratio set to `ratio`).
Result<Allocation> plan_allocation(const StreamCalibration& stream, int64_t n_features, double ratio,
                                   const AllocatorOptions& options);

// Mean squared norm of the calibration vectors, total_variance + |mean|^2: the denominator of a
// relative error.
double mean_squared_norm(const PcaBasis& basis);

}  // namespace kvtc
