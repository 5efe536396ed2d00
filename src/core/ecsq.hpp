// Entropy-constrained scalar quantisation of PCA coefficients: codec v3's quantiser (docs/FORMAT.md,
// section 9), defined once for calibration, the encoders, the decoders and the reference decoder.
//
// Each kept component j is quantised on its own uniform step with plain rounding,
//   q = sign(c) * min(floor(|c| / step + 0.5), kEcsqMaxMagnitude),
// and reconstructed at the calibration centroid of its bin: 0 for q = 0, else
// sign(q) * (|q| + delta) * step. Which step each component takes, or whether it is dropped, is a
// *level* of a ladder learnt at calibration by minimising distortion + lambda * rate, the rate being
// the code length under the static rANS table that will code it (bench/RESULTS.md, "Codec v3 design
// study"). A container names one level per stream (rate control picks it); the steps, centroids and
// tables live in the calibration file, so no container carries a table.
#pragma once

#include <cstdint>
#include <vector>

#include "entropy/rans_table.hpp"
#include "format/ecsq_rules.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

// The per-element rules (codes, symbols, raw bits, reconstruction) are format/ecsq_rules.hpp, shared
// with the GPU decoder.
constexpr int kEcsqGridSteps = 48;  // steps per component at calibration: sigma / 256 .. 16 sigma
constexpr int kEcsqDefaultProbBits = 10;
constexpr int kEcsqMaxLevels = 4096;

// One (component, step) choice: what a level points at.
struct EcsqCell {
  uint8_t grid_step = 0;  // i: step = 2^((k_lo + i) / 4) at calibration (information; `step` is what counts)
  float step = 0.0f;      // > 0, finite
  float delta = 0.0f;     // reconstruction offset, [-0.5, 0.5]
  RansTable table;        // alphabet 2..kEcsqMaxTableAlphabet; its last symbol is the escape
  bool operator==(const EcsqCell&) const = default;
};

struct EcsqLevel {
  double lambda = 0.0;            // the Lagrange multiplier it was chosen with (information)
  double bits_per_token = 0.0;    // predicted at calibration, raw bits included
  double error_per_token = 0.0;   // predicted squared error per token over the model's components
  std::vector<uint8_t> cell;      // [n_components]: 0 dropped, else 1 + index into cells[j]
  uint32_t n_kept() const;        // 1 + the last component with a cell, 0 if none
  bool operator==(const EcsqLevel&) const = default;
};

// The quantiser of one stream. Levels go from the finest (most bits) to the coarsest, which drops
// every component, so that any target ratio is reachable.
struct EcsqModel {
  int prob_bits = kEcsqDefaultProbBits;
  std::vector<std::vector<EcsqCell>> cells;  // [n_components]: the cells any level uses, finest step first
  std::vector<EcsqLevel> levels;
  uint64_t fingerprint = 0;  // ecsq_model_fingerprint, set by learn_ecsq_model and parse_ecsq_model
  uint32_t n_components() const { return uint32_t(cells.size()); }
  bool empty() const { return levels.empty(); }
  bool operator==(const EcsqModel&) const = default;
};

struct EcsqLearnOptions {
  int prob_bits = kEcsqDefaultProbBits;
  double finest_ratio = 2.0;     // levels from 16 p / 2 bits per token ...
  double coarsest_ratio = 256.0; // ... to 16 p / 256, then one that drops everything
  int levels_per_octave = 32;
  int n_threads = 0;
};

// Learns the model from coefficients [n_samples][n_components] (row-major) of one stream. They should be
// what unseen caches look like, i.e. out-of-fold (calibrate.cpp): statistics of in-sample coefficients
// understate the variance of trailing components several times. n_features (p) sets the bit budgets of
// the levels: 16 p / ratio.
Result<EcsqModel> learn_ecsq_model(const float* coefficients, int64_t n_samples, int64_t n_components,
                                   int64_t n_features, const EcsqLearnOptions& options);

// Serialised form (docs/CALIBRATION_FORMAT.md, sections KECQ and VECQ). parse checks every count
// against the bytes left, every step, offset and table, and every level's cells (CORRUPT with a
// message); n_components must match the stream's basis rank.
void serialize_ecsq_model(const EcsqModel& model, std::vector<uint8_t>& out);  // appends
Result<EcsqModel> parse_ecsq_model(const uint8_t* bytes, size_t size_bytes, uint32_t n_components);
// 64-bit identity of a model (FNV-1a of its serialised form): containers record it.
uint64_t ecsq_model_fingerprint(const EcsqModel& model);

// The level for a target ratio from the calibration's predictions alone: the finest whose predicted
// bits per token are at most 16 p / ratio (rate control starts here).
uint32_t ecsq_predicted_level(const EcsqModel& model, int64_t n_features, double ratio);

}  // namespace kvtc
