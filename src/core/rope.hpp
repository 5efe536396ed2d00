// Rotary position embedding: apply or remove it on rows of one head.
#pragma once

#include <cstdint>
#include <vector>

#include "kvtc/cache.hpp"

namespace kvtc {

// Precomputed cos/sin for a run of positions, so that many heads and layers share one table.
class RopeTable {
 public:
  // Positions first_position .. first_position + n_positions - 1. Angles are computed in double
  // (position * inv_freq) and rounded to fp32 once.
  RopeTable(const RopeParams& params, int head_dim, int64_t first_position, int64_t n_positions);

  // Rotates rows x[n_rows][head_dim] in place; row r has position first_position + row0 + r.
  // inverse = true rotates by the negative angle, undoing a forward rotation up to fp32 rounding.
  void apply(float* x, int64_t row0, int64_t n_rows, bool inverse) const;

  int head_dim() const { return head_dim_; }
  int64_t first_position() const { return first_position_; }
  int64_t n_positions() const { return n_positions_; }

 private:
  RopeStyle style_;
  int head_dim_;
  int64_t first_position_;
  int64_t n_positions_;
  std::vector<float> cos_, sin_;  // [n_positions][head_dim / 2]
};

}  // namespace kvtc
