// Bit allocation: which components are kept, in which groups, at what width.
//
// Search space: the first `rank` components (variance order) are split into contiguous groups whose
// size s comes from `group_sizes` and whose start is a multiple of s (aligned, so sizes nest). Each
// group takes one option: dropped, kInt at width 1..8, kIntAffine at width 1..8, or kFloat16.
// Cost per token: n * value_bits + side_bits. Distortion: the squared error measured by quantising
// calibration coefficients with quant.hpp (dropped: their energy).
// The allocator minimises total distortion subject to cost <= budget bits per token.
#pragma once

#include <cstdint>
#include <vector>

#include "core/quant.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

struct Group {
  uint32_t first_component = 0;
  uint32_t n_components = 0;
  GroupKind kind = GroupKind::kDropped;
  uint8_t width_bits = 0;  // kInt / kIntAffine: 1..8; kFloat16: 16; kDropped: 0

  int64_t bits_per_token() const {
    return int64_t(n_components) * value_bits(kind, width_bits) + side_bits_per_token(kind);
  }
  bool operator==(const Group&) const = default;
};

struct Allocation {
  double target_ratio = 0.0;
  int64_t budget_bits_per_token = 0;
  int64_t bits_per_token = 0;          // used, side information included; <= budget
  double predicted_error = 0.0;        // mean squared error per token (sum over all p features)
  std::vector<Group> groups;           // contiguous from component 0; dropped tail omitted
  int64_t n_kept_components() const;   // components in non-dropped groups, up to the last kept one
};

// One option a group can take.
struct GroupOption {
  GroupKind kind = GroupKind::kDropped;
  uint8_t width_bits = 0;
  bool operator==(const GroupOption&) const = default;
};

struct AllocatorOptions {
  // Each divides the next. 32, 128 and 512 matter: on the reference model's caches the allocator
  // builds its widths-descending staircase from 16..512 groups, and these intermediate sizes lower the
  // error by 2-7% (at 16-64x) over {1, 4, 16, 64, 256, 1024}; measuring costs time per size.
  std::vector<int> group_sizes = {1, 4, 16, 32, 64, 128, 256, 512, 1024};
  std::vector<GroupOption> options;  // empty: dropped, kInt 1..8, kIntAffine 1..8, kFloat16
  int64_t max_samples = 4096;        // calibration tokens used to measure distortion
  // Exact DP over (component, bits) when rank * budget stays below this; Lagrangian above it.
  int64_t exact_dp_max_cells = int64_t(1) << 26;
  int n_threads = 0;  // 0: all cores
};

// The measured distortion of every candidate (aligned group, option): the data both allocators use.
struct DistortionTable {
  int64_t rank = 0;
  std::vector<int> group_sizes;
  std::vector<GroupOption> options;
  double residual_error = 0.0;  // energy beyond the rank (total_variance - sum of kept variances)
  // [rank] mean squared coefficient of each component over the measured samples: the error of
  // dropping it. The allocators use it for the dropped tail (components past the last group, including
  // any that no aligned group fits), so every prefix of the components can end an allocation.
  std::vector<double> component_energy;
  // error[size_index][group_index][option_index], mean squared error per token.
  std::vector<std::vector<std::vector<double>>> error;
};

// Measures the table from coefficients [n_samples][rank] (row-major, already centred and projected).
Result<DistortionTable> measure_distortion(const float* coefficients, int64_t n_samples, int64_t rank,
                                           double residual_error, const AllocatorOptions& options);

// Exact minimum-distortion allocation for the budget (dynamic program over (component, bits used)).
Result<Allocation> allocate_exact(const DistortionTable& table, int64_t budget_bits_per_token);
// Lagrangian: minimises distortion + lambda * bits by DP for each lambda, bisecting lambda to the
// largest cost <= budget. Optimal for the cost it reaches (a point of the lower convex hull).
// O(rank * options * log(1/tol)); used for wide models.
Result<Allocation> allocate_lagrangian(const DistortionTable& table, int64_t budget_bits_per_token);
// Picks exact or Lagrangian by AllocatorOptions::exact_dp_max_cells.
Result<Allocation> allocate(const DistortionTable& table, int64_t budget_bits_per_token,
                            const AllocatorOptions& options);

// Budget for a target compression ratio: floor(16 * p / ratio) bits per token.
int64_t budget_bits_for_ratio(int64_t n_features, double ratio);

}  // namespace kvtc
