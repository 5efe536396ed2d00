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
  float m = -INFINITY;
  for (int64_t j = 0; j < n_visible; ++j) m = row[j] > m ? row[j] : m;
  float sum = 0.0f;
  for (int64_t j = 0; j < n_visible; ++j) {
    const float e = fast_exp(row[j] - m);
    row[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n_visible; ++j) row[j] *= inv;
  for (int64_t j = n_visible; j < n_total; ++j) row[j] = 0.0f;
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

}  // namespace kvtc::engine
