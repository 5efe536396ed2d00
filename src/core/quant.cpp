// Per-group quantisation. Speed matters: the allocator measures every candidate (group, kind, width)
// on thousands of tokens, and the encoder quantises every token x group. The hot loops are SSE2 (the
// x86-64 baseline) with a scalar twin for other targets and for tails; both perform the same IEEE
// operations per element, so a code and its reconstruction never depend on the path that made them.
#include "core/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "format/quant_rules.hpp"
#include "util/half.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#define KVTC_QUANT_SSE2 1
#endif

// A fused multiply-add would round differently from the separate multiply and add that kernels
// mirroring dequantize_value perform (and than the vector loops here): keep them separate.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace kvtc {
namespace {

// Step of the MSE-optimal uniform quantiser with N = 2^w levels for a unit Gaussian (Max 1960;
// Hui & Neuhoff 2001): times the rms of the group, a good step when the values are bell-shaped.
constexpr float kGaussianStep[kMaxWidthBits + 1] = {0.0f,    1.596f,  0.9957f, 0.5860f, 0.3352f,
                                                    0.1881f, 0.1041f, 0.0569f, 0.0308f};
// Fractions of the largest magnitude that the outermost level is set to (clipping the rest): per-token
// min/max ranges waste levels on rare extremes, so a shrunk range is tried as well. Measured on the
// reference model's caches, more candidates (7 clip factors, 3 Gaussian steps) lower the error by
// under 1% while costing proportionally more time in every encode.
constexpr float kClipFactors[] = {1.0f, 0.7f};
constexpr int kMaxCandidates = 8;
// Groups this small are quantised with the full range only: clipping cannot pay off.
constexpr int kMinSearchSize = 3;

// fp16 conversions, step and shift storage and the code rule are format/quant_rules.hpp's (shared with
// the GPU): f32_to_f16_bits / f16_bits_to_f32, step_to_f16_bits (positive and finite: an overflowing
// step saturates, an underflowing one becomes the smallest subnormal), shift_to_f16_bits (finite,
// saturating at +-65504) and quant_code_of.

int clamp_width(int width_bits) { return std::clamp(width_bits, 1, kMaxWidthBits); }

struct Stats {
  float amax = 0.0f, min = 0.0f, max = 0.0f;
  double sum = 0.0, sum_sq = 0.0, sum_abs = 0.0;
};

// One pass over the group; NaNs never win a max or min.
Stats group_stats(const float* x, int n) {
  Stats s;
  if (n <= 0) return s;
  constexpr float kInfF = std::numeric_limits<float>::infinity();
  float amax = 0.0f, mn = kInfF, mx = -kInfF, sum = 0.0f, sum_sq = 0.0f, sum_abs = 0.0f;
  int i = 0;
#if KVTC_QUANT_SSE2
  if (n >= 8) {
    const __m128 sign = _mm_set1_ps(-0.0f);
    __m128 vamax = _mm_setzero_ps(), vmin = _mm_set1_ps(kInfF), vmax = _mm_set1_ps(-kInfF);
    __m128 vsum = _mm_setzero_ps(), vsq = _mm_setzero_ps(), vabs = _mm_setzero_ps();
    for (; i + 4 <= n; i += 4) {
      const __m128 v = _mm_loadu_ps(x + i);
      const __m128 a = _mm_andnot_ps(sign, v);
      vamax = _mm_max_ps(a, vamax);
      vmin = _mm_min_ps(v, vmin);
      vmax = _mm_max_ps(v, vmax);
      vsum = _mm_add_ps(vsum, v);
      vsq = _mm_add_ps(vsq, _mm_mul_ps(v, v));
      vabs = _mm_add_ps(vabs, a);
    }
    alignas(16) float l[6][4];
    _mm_store_ps(l[0], vamax);
    _mm_store_ps(l[1], vmin);
    _mm_store_ps(l[2], vmax);
    _mm_store_ps(l[3], vsum);
    _mm_store_ps(l[4], vsq);
    _mm_store_ps(l[5], vabs);
    for (int k = 0; k < 4; ++k) {
      amax = l[0][k] > amax ? l[0][k] : amax;
      mn = l[1][k] < mn ? l[1][k] : mn;
      mx = l[2][k] > mx ? l[2][k] : mx;
    }
    sum = (l[3][0] + l[3][1]) + (l[3][2] + l[3][3]);
    sum_sq = (l[4][0] + l[4][1]) + (l[4][2] + l[4][3]);
    sum_abs = (l[5][0] + l[5][1]) + (l[5][2] + l[5][3]);
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i];
    const float a = std::fabs(v);
    amax = a > amax ? a : amax;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    sum += v;
    sum_sq += v * v;
    sum_abs += a;
  }
  s.amax = amax;
  s.min = mn;
  s.max = mx;
  s.sum = sum;
  s.sum_sq = sum_sq;
  s.sum_abs = sum_abs;
  return s;
}

// How one candidate maps values: kInt  q = quant_code_of(x * inv + bias), x' = (q - half) * scale;
//                                kIntAffine q = quant_code_of((x - shift) * inv + 0.5), x' = shift + q * scale.
struct Mapper {
  GroupKind kind;
  float scale, shift, inv, half, bias, top;
  Mapper(GroupKind k, int n_levels, float s, float sh)
      : kind(k),
        scale(s),
        shift(sh),
        inv(1.0f / s),
        half(float(n_levels - 1) * 0.5f),
        bias(float(n_levels - 1) * 0.5f + 0.5f),
        top(float(n_levels - 1) + 0.5f) {}
  int code(float x) const {
    return kind == GroupKind::kInt ? quant_code_of(x * inv + bias, top) : quant_code_of((x - shift) * inv + 0.5f, top);
  }
  float value(int q) const { return kind == GroupKind::kInt ? (float(q) - half) * scale : shift + float(q) * scale; }
};

#if KVTC_QUANT_SSE2
// Reconstruction of four values, the same operations as Mapper::code + Mapper::value.
template <GroupKind kKind>
inline __m128 reconstruct4(const Mapper& m, __m128 v) {
  const __m128 zero = _mm_setzero_ps(), top = _mm_set1_ps(m.top), inv = _mm_set1_ps(m.inv), scale = _mm_set1_ps(m.scale);
  __m128 t;
  if constexpr (kKind == GroupKind::kInt) {
    t = _mm_add_ps(_mm_mul_ps(v, inv), _mm_set1_ps(m.bias));
  } else {
    t = _mm_add_ps(_mm_mul_ps(_mm_sub_ps(v, _mm_set1_ps(m.shift)), inv), _mm_set1_ps(0.5f));
  }
  t = _mm_min_ps(_mm_max_ps(t, zero), top);  // max(NaN, 0) is 0, as in quant_code_of
  const __m128 q = _mm_cvtepi32_ps(_mm_cvttps_epi32(t));
  if constexpr (kKind == GroupKind::kInt) return _mm_mul_ps(_mm_sub_ps(q, _mm_set1_ps(m.half)), scale);
  return _mm_add_ps(_mm_set1_ps(m.shift), _mm_mul_ps(q, scale));
}
#endif

// Squared error of one candidate in float lanes: only ranks candidates.
template <GroupKind kKind>
float candidate_error_kind(const float* x, int n, const Mapper& m) {
  int i = 0;
  float err = 0.0f;
#if KVTC_QUANT_SSE2
  __m128 acc0 = _mm_setzero_ps(), acc1 = _mm_setzero_ps();  // two chains hide the add latency
  for (; i + 8 <= n; i += 8) {
    const __m128 v0 = _mm_loadu_ps(x + i), v1 = _mm_loadu_ps(x + i + 4);
    const __m128 d0 = _mm_sub_ps(v0, reconstruct4<kKind>(m, v0)), d1 = _mm_sub_ps(v1, reconstruct4<kKind>(m, v1));
    acc0 = _mm_add_ps(acc0, _mm_mul_ps(d0, d0));
    acc1 = _mm_add_ps(acc1, _mm_mul_ps(d1, d1));
  }
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    const __m128 d = _mm_sub_ps(v, reconstruct4<kKind>(m, v));
    acc0 = _mm_add_ps(acc0, _mm_mul_ps(d, d));
  }
  alignas(16) float l[4];
  _mm_store_ps(l, _mm_add_ps(acc0, acc1));
  err = (l[0] + l[1]) + (l[2] + l[3]);
#endif
  for (; i < n; ++i) {
    const float d = x[i] - m.value(m.code(x[i]));
    err += d * d;
  }
  return err;
}

float candidate_error(const float* x, int n, const Mapper& m) {
  return m.kind == GroupKind::kInt ? candidate_error_kind<GroupKind::kInt>(x, n, m)
                                   : candidate_error_kind<GroupKind::kIntAffine>(x, n, m);
}

// The reported error: (x - x') in double, exactly what a caller measures from dequantize_token.
template <GroupKind kKind>
double exact_error_kind(const float* x, int n, const Mapper& m) {
  int i = 0;
  double err = 0.0;
#if KVTC_QUANT_SSE2
  __m128d acc0 = _mm_setzero_pd(), acc1 = _mm_setzero_pd();
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    const __m128 r = reconstruct4<kKind>(m, v);
    const __m128d d0 = _mm_sub_pd(_mm_cvtps_pd(v), _mm_cvtps_pd(r));
    const __m128d d1 = _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(v, v)), _mm_cvtps_pd(_mm_movehl_ps(r, r)));
    acc0 = _mm_add_pd(acc0, _mm_mul_pd(d0, d0));
    acc1 = _mm_add_pd(acc1, _mm_mul_pd(d1, d1));
  }
  alignas(16) double l[4];
  _mm_store_pd(l, acc0);
  _mm_store_pd(l + 2, acc1);
  err = (l[0] + l[1]) + (l[2] + l[3]);
#endif
  for (; i < n; ++i) {
    const double d = double(x[i]) - double(m.value(m.code(x[i])));
    err += d * d;
  }
  return err;
}

double exact_error(const float* x, int n, const Mapper& m) {
  return m.kind == GroupKind::kInt ? exact_error_kind<GroupKind::kInt>(x, n, m)
                                   : exact_error_kind<GroupKind::kIntAffine>(x, n, m);
}

// Candidate parameters of one group; returns how many were written.
int candidates(const float* x, int n, const Stats& s, GroupKind kind, int width, TokenQuantParams* out) {
  const int n_levels = 1 << width;
  const float half = float(n_levels - 1) * 0.5f;
  const bool search = n >= kMinSearchSize;
  int k = 0;
  if (kind == GroupKind::kInt) {
    if (width == 1) {
      // The codes are the signs whatever the step: the best step puts the levels at +-mean|x|.
      out[k++].scale_f16 = step_to_f16_bits(float(2.0 * s.sum_abs / n));
      return k;
    }
    for (float f : kClipFactors) {
      out[k++].scale_f16 = step_to_f16_bits(s.amax * f / half);
      if (!search) return k;
    }
    const float rms = float(std::sqrt(s.sum_sq / n));
    out[k++].scale_f16 = step_to_f16_bits(kGaussianStep[width] * rms);
    return k;
  }
  auto add = [&](float lo, float step) {
    out[k].shift_f16 = shift_to_f16_bits(lo);
    out[k].scale_f16 = step_to_f16_bits(step);
    ++k;
  };
  const float mean = float(s.sum / n);
  if (width == 1 && search) {
    // Two levels split at the mean: mean +- mean|x - mean| approximates the two half-means.
    double mad = 0.0;
    for (int i = 0; i < n; ++i) mad += std::fabs(double(x[i]) - mean);
    const float m = float(mad / n);
    add(mean - m, 2.0f * m);
  }
  const float mid = 0.5f * (s.min + s.max);
  const float half_range = 0.5f * (s.max - s.min);
  for (float f : kClipFactors) {
    const float hw = half_range * f;
    add(mid - hw, 2.0f * hw / float(n_levels - 1));
    if (!search || width == 1) return k;
  }
  const double var = std::max(0.0, s.sum_sq / n - double(mean) * mean);
  const float step = kGaussianStep[width] * float(std::sqrt(var));
  add(mean - half * step, step);
  return k;
}

// The chosen parameters. Returns false when the group needs no codes: all zeros (kInt) or constant
// (kIntAffine); then `best` reconstructs it with the fill code (fill_code()).
bool choose(const float* x, int n, const Stats& s, GroupKind kind, int width, TokenQuantParams* best) {
  if (kind == GroupKind::kInt ? !(s.amax > 0.0f) : !(s.max > s.min)) {
    *best = TokenQuantParams{0, kind == GroupKind::kInt ? uint16_t(0) : shift_to_f16_bits(s.min)};
    return false;
  }
  TokenQuantParams cand[kMaxCandidates];
  const int n_cand = candidates(x, n, s, kind, width, cand);
  *best = cand[0];
  if (n_cand == 1) return true;
  const int n_levels = 1 << width;
  float best_err = 0.0f;
  for (int c = 0; c < n_cand; ++c) {
    const Mapper m(kind, n_levels, f16_bits_to_f32(cand[c].scale_f16), f16_bits_to_f32(cand[c].shift_f16));
    const float e = candidate_error(x, n, m);
    if (c == 0 || e < best_err) {  // ties: the first
      best_err = e;
      *best = cand[c];
      if (e == 0.0f) break;
    }
  }
  return true;
}

uint8_t fill_code(GroupKind kind, int width) { return kind == GroupKind::kInt ? uint8_t(1 << (width - 1)) : uint8_t(0); }

double coded_error(const float* x, int n, const Stats& s, GroupKind kind, int width) {
  TokenQuantParams p;
  const int n_levels = 1 << width;
  const float scale = 0.0f;
  if (!choose(x, n, s, kind, width, &p)) {
    // What dequantize_token makes of the fill codes: zeros (kInt) or the shift (kIntAffine).
    const float r = dequantize_value(fill_code(kind, width), kind, width, scale, f16_bits_to_f32(p.shift_f16));
    double err = 0.0;
    for (int i = 0; i < n; ++i) {
      const double d = double(x[i]) - double(r);
      err += d * d;
    }
    return err;
  }
  return exact_error(x, n, Mapper(kind, n_levels, f16_bits_to_f32(p.scale_f16), f16_bits_to_f32(p.shift_f16)));
}

double plain_error(const float* x, int n, GroupKind kind) {
  double err = 0.0;
  if (kind == GroupKind::kDropped) {
    for (int i = 0; i < n; ++i) err += double(x[i]) * x[i];
  } else if (kind == GroupKind::kFloat16) {
    for (int i = 0; i < n; ++i) {
      const double d = double(x[i]) - double(f16_bits_to_f32(f32_to_f16_bits(x[i])));
      err += d * d;
    }
  }
  return err;
}

bool is_coded(GroupKind kind) { return kind == GroupKind::kInt || kind == GroupKind::kIntAffine; }

}  // namespace

float dequantize_value(uint8_t code, GroupKind kind, int width_bits, float scale, float shift) {
  return dequantize_code(code, int(kind), width_bits, scale, shift);  // format/quant_rules.hpp, the GPU's too
}

TokenQuantParams quantize_token(const float* x, int n, GroupKind kind, int width_bits, uint8_t* codes) {
  if (!is_coded(kind) || n <= 0) return {};
  const int width = clamp_width(width_bits);
  TokenQuantParams p;
  if (!choose(x, n, group_stats(x, n), kind, width, &p)) {
    std::fill(codes, codes + n, fill_code(kind, width));
    return p;
  }
  const Mapper m(kind, 1 << width, f16_bits_to_f32(p.scale_f16), f16_bits_to_f32(p.shift_f16));
  for (int i = 0; i < n; ++i) codes[i] = uint8_t(m.code(x[i]));
  return p;
}

void dequantize_token(const uint8_t* codes, int n, GroupKind kind, int width_bits, TokenQuantParams params,
                      float* out) {
  const int width = clamp_width(width_bits);
  const float scale = f16_to_f32(params.scale_f16);
  const float shift = f16_to_f32(params.shift_f16);
  for (int i = 0; i < n; ++i) out[i] = dequantize_value(codes[i], kind, width, scale, shift);
}

double quantization_error(const float* x, int n, GroupKind kind, int width_bits) {
  if (n <= 0) return 0.0;
  if (!is_coded(kind)) return plain_error(x, n, kind);
  return coded_error(x, n, group_stats(x, n), kind, clamp_width(width_bits));
}

void quantization_errors(const float* x, int n, int count, const GroupKind* kinds, const uint8_t* widths,
                         double* out) {
  if (n <= 0) {
    std::fill(out, out + count, 0.0);
    return;
  }
  const Stats s = group_stats(x, n);
  for (int i = 0; i < count; ++i)
    out[i] = is_coded(kinds[i]) ? coded_error(x, n, s, kinds[i], clamp_width(widths[i])) : plain_error(x, n, kinds[i]);
}

}  // namespace kvtc
