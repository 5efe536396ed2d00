// Comparisons (the clamp in fast_exp, max) may raise FP exceptions under GCC's default
// -ftrapping-math, which stops it from turning them into vector min/max; kvtc never reads the FP
// exception flags, so these loops are compiled without that guarantee (results are unchanged).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "engine/kernels.hpp"

#include <cmath>

namespace kvtc::engine {

void rms_norm_row(const float* x, const float* w, int n, float eps, float* out) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float var = float(ss / n);
  const float r = 1.0f / std::sqrt(var + eps);
  for (int i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

void softmax_row(float* row, int64_t n_visible, int64_t n_total) {
  // Max and sum use kLanes independent accumulators so that the compiler vectorises them without
  // reassociating a single running value (which it may not do under strict IEEE rules); the exp
  // loop has no reduction at all.
  constexpr int kLanes = 8;
  float lane[kLanes];
  for (float& x : lane) x = -INFINITY;
  int64_t j = 0;
  for (; j + kLanes <= n_visible; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] = row[j + k] > lane[k] ? row[j + k] : lane[k];
  float m = -INFINITY;
  for (; j < n_visible; ++j) m = row[j] > m ? row[j] : m;
  for (float x : lane) m = x > m ? x : m;
  for (j = 0; j < n_visible; ++j) row[j] = fast_exp(row[j] - m);
  for (float& x : lane) x = 0.0f;
  for (j = 0; j + kLanes <= n_visible; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] += row[j + k];
  float sum = 0.0f;
  for (; j < n_visible; ++j) sum += row[j];
  for (float x : lane) sum += x;
  const float inv = 1.0f / sum;
  for (j = 0; j < n_visible; ++j) row[j] *= inv;
  for (j = n_visible; j < n_total; ++j) row[j] = 0.0f;
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + fast_exp(-g))) * up[i];
  }
}

void rope_rotate(float* x, const float* c, const float* s, int n_pairs, bool interleaved) {
  if (interleaved) {
    for (int i = 0; i < n_pairs; ++i) {
      const float a = x[2 * i], b = x[2 * i + 1];
      x[2 * i] = a * c[i] - b * s[i];
      x[2 * i + 1] = b * c[i] + a * s[i];
    }
  } else {
    float* a = x;
    float* b = x + n_pairs;
    for (int i = 0; i < n_pairs; ++i) {
      const float xa = a[i], xb = b[i];
      a[i] = xa * c[i] - xb * s[i];
      b[i] = xb * c[i] + xa * s[i];
    }
  }
}

void rope_angles(const int64_t* positions, int64_t n, const float* inv_freq, int n_pairs, float* cos, float* sin) {
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < n_pairs; ++i) {
      const float angle = float(positions[t]) * inv_freq[i];
      cos[t * n_pairs + i] = float(std::cos(double(angle)));
      sin[t * n_pairs + i] = float(std::sin(double(angle)));
    }
}

}  // namespace kvtc::engine
