#include "core/rope.hpp"

#include <cassert>
#include <cmath>

namespace kvtc {
namespace {

// Work in blocks of kBlock pairs with a fixed-count inner loop: GCC at -O2 (its "very cheap" vectoriser
// cost model) turns a fixed-count body into SIMD code, where a loop of run-time length would stay
// scalar. Head sizes are multiples of 16 in practice, so the scalar tail rarely runs.
constexpr int kBlock = 8;

// Pairs (a[i], b[i]) rotated by the angle whose cosine and sine are c[i], s[i]; inverse negates it.
template <bool kInverse>
inline void rotate_half(float* __restrict a, float* __restrict b, const float* __restrict c,
                        const float* __restrict s, int n_pairs) {
  int i = 0;
  for (; i + kBlock <= n_pairs; i += kBlock) {
#pragma GCC unroll 8
    for (int j = i; j < i + kBlock; ++j) {
      const float xa = a[j], xb = b[j];
      const float sj = kInverse ? -s[j] : s[j];
      a[j] = xa * c[j] - xb * sj;
      b[j] = xa * sj + xb * c[j];
    }
  }
  for (; i < n_pairs; ++i) {
    const float xa = a[i], xb = b[i];
    const float si = kInverse ? -s[i] : s[i];
    a[i] = xa * c[i] - xb * si;
    b[i] = xa * si + xb * c[i];
  }
}

// Pairs (x[2i], x[2i + 1]).
template <bool kInverse>
inline void rotate_interleaved(float* __restrict x, const float* __restrict c, const float* __restrict s,
                               int n_pairs) {
  int i = 0;
  for (; i + kBlock <= n_pairs; i += kBlock) {
#pragma GCC unroll 8
    for (int j = i; j < i + kBlock; ++j) {
      const float xa = x[2 * j], xb = x[2 * j + 1];
      const float sj = kInverse ? -s[j] : s[j];
      x[2 * j] = xa * c[j] - xb * sj;
      x[2 * j + 1] = xa * sj + xb * c[j];
    }
  }
  for (; i < n_pairs; ++i) {
    const float xa = x[2 * i], xb = x[2 * i + 1];
    const float si = kInverse ? -s[i] : s[i];
    x[2 * i] = xa * c[i] - xb * si;
    x[2 * i + 1] = xa * si + xb * c[i];
  }
}

template <bool kInverse>
void apply_rows(RopeStyle style, int head_dim, const float* cos_rows, const float* sin_rows, float* x,
                int64_t n_rows) {
  const int half = head_dim / 2;
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = x + r * head_dim;
    const float* c = cos_rows + r * half;
    const float* s = sin_rows + r * half;
    if (style == RopeStyle::kHalf) {
      rotate_half<kInverse>(row, row + half, c, s, half);
    } else {
      rotate_interleaved<kInverse>(row, c, s, half);
    }
  }
}

}  // namespace

RopeTable::RopeTable(const RopeParams& params, int head_dim, int64_t first_position, int64_t n_positions)
    : style_(params.style),
      head_dim_(head_dim),
      first_position_(first_position),
      n_positions_(n_positions > 0 ? n_positions : 0) {
  const int half = head_dim > 0 ? head_dim / 2 : 0;
  const std::vector<double> inv_freq = params.inv_freq(2 * half);
  cos_.resize(size_t(n_positions_) * half);
  sin_.resize(size_t(n_positions_) * half);
  for (int64_t p = 0; p < n_positions_; ++p) {
    // The product in double keeps the angle exact to ~1e-16 relative even at position 2^20; cos and
    // sin are then rounded to fp32 once, so forward and inverse use the very same numbers.
    const double position = double(first_position + p);
    for (int i = 0; i < half; ++i) {
      const double angle = position * inv_freq[i];
      cos_[size_t(p) * half + i] = float(std::cos(angle));
      sin_[size_t(p) * half + i] = float(std::sin(angle));
    }
  }
}

void RopeTable::apply(float* x, int64_t row0, int64_t n_rows, bool inverse) const {
  assert(row0 >= 0 && n_rows >= 0 && row0 + n_rows <= n_positions_);
  if (n_rows <= 0 || head_dim_ < 2) return;
  const size_t half = size_t(head_dim_ / 2);
  const float* c = cos_.data() + size_t(row0) * half;
  const float* s = sin_.data() + size_t(row0) * half;
  if (inverse) {
    apply_rows<true>(style_, head_dim_, c, s, x, n_rows);
  } else {
    apply_rows<false>(style_, head_dim_, c, s, x, n_rows);
  }
}

}  // namespace kvtc
