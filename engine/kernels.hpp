// Small fp32 kernels of the forward pass that are not matrix products (those go to OpenBLAS).
// Written as plain loops of fixed shape so that the compiler vectorises them.
#pragma once

#include <cstdint>
#include <cstring>

namespace kvtc::engine {

// exp(x) for x in [-87, 88] (clamped outside) with relative error below 2e-7: Cephes' expf reduction
// and polynomial. Unlike std::exp it vectorises, which matters for softmax over 4K-token rows.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.44269504088896341f;
  const float fn = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer
  const float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = uint32_t(int32_t(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// out[i] = x[i] * rsqrt(mean(x^2) + eps) * w[i] for one row of n features (Hugging Face LlamaRMSNorm
// in fp32; the mean accumulates in double).
void rms_norm_row(const float* x, const float* w, int n, float eps, float* out);

// In-place softmax of row[0 .. n_visible); row[n_visible .. n_total) is zeroed (masked).
void softmax_row(float* row, int64_t n_visible, int64_t n_total);

// out[i] = silu(gate[i]) * up[i].
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// Rotates one head's features (head_dim = 2 * n_pairs) by the angles whose cos/sin are given per pair.
// half: pairs (i, i + n_pairs); interleaved: pairs (2i, 2i + 1).
void rope_rotate(float* x, const float* cos, const float* sin, int n_pairs, bool interleaved);

// cos and sin [n][n_pairs] of the RoPE angles of n positions, as transformers computes them:
// angle = fp32(position) * inv_freq[i] in fp32, then cos and sin of that fp32 angle.
void rope_angles(const int64_t* positions, int64_t n, const float* inv_freq, int n_pairs, float* cos, float* sin);

}  // namespace kvtc::engine
