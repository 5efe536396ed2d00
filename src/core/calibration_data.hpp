// What a calibration holds; its file encoding is format/calibration_file.hpp (docs/CALIBRATION_FORMAT.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/allocation.hpp"
#include "core/ecsq.hpp"
#include "core/pca.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

// One stream (keys or values): its basis, the measured distortion table (so that any ratio can be
// planned later), one allocation per calibrated ratio, and codec v3's quantiser.
struct StreamCalibration {
  PcaBasis pca;
  DistortionTable table;
  std::vector<Allocation> allocations;  // same order as CalibrationData::ratios
  EcsqModel ecsq;                       // empty when not learnt (and in version-1 files); else pca.rank components
};

struct CalibrationData {
  ModelShape shape;
  std::string model_name;
  int32_t n_sink_tokens = 4;     // tokens at the start left out of calibration (and kept exact)
  int32_t n_window_tokens = 128; // newest tokens left out (and kept exact)
  int64_t n_calibration_tokens = 0;
  std::vector<double> ratios;
  StreamCalibration key, value;  // keys are calibrated with RoPE removed
  // Where the ECSQ models' statistics came from (informational, META "ecsq_folds"): 2 when out-of-fold
  // over two folds, 1 in-sample, 0 when there are no models. Both streams have models or neither.
  int32_t ecsq_folds = 0;
  uint64_t fingerprint = 0;      // compute_fingerprint(*this), set by whoever builds or parses it
};

// 64-bit identity of the shape, means and bases (not the allocations): a container records it, and
// decoding with a calibration of another fingerprint is refused with kMismatch. Computed over the
// calibration file's own encoding of those fields (format/calibration_file.cpp).
uint64_t compute_fingerprint(const CalibrationData& data);

}  // namespace kvtc
