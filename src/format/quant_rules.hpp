// Codec 2's per-element rules, one code for the host and the GPU (KVTC_HD, format/hd.hpp): the
// quantiser of one (token, group), the reconstruction of a code, and the byte of a raw chunk
// (docs/FORMAT.md section 5) at a given index. The GPU encoder and decoder run them; the CPU
// quantiser (src/core/quant.cpp) calls the scalar ones and mirrors the rest in SSE2.
//
// Bit-exactness is the contract. quantize_group() mirrors src/core/quant.cpp's quantize_token()
// operation for operation: the same statistics in the same float summation order (quant.cpp's SSE2
// path, the one every x86-64 build takes: four lanes over the first n - n % 4 values when n >= 8,
// lanes summed as (l0 + l1) + (l2 + l3), then the scalar tail), the same candidate steps with the
// same fp16 rounding of parameters, the same error ranking (two 4-lane accumulators over blocks of
// 8, one over a remaining block of 4, then the tail) and the same code rule. Every float and double
// operation is one IEEE operation rounded to nearest (format/hd.hpp). So identical coefficients give
// identical codes and parameters on the CPU and on the GPU; tests/test_encode_kernels_host.cpp checks
// it on the host, tests/test_cuda_encode.cpp on the device.
//
// The chunk bytes (pack_job_byte) are those of src/core/chunk_codec.cpp's pack_side / pack_codes and
// of the CPU encoder's exact chunks, computed one output byte at a time so that a GPU thread per byte
// writes each byte once, with no atomics.
//
// No CUDA headers, no allocation, no std containers.
#pragma once

#include <cstdint>

#include "format/hd.hpp"

namespace kvtc {

// ---------------------------------------------------------------------------------------------
// The quantiser (src/core/quant.cpp). Kinds as GroupKind: 0 dropped, 1 int, 2 int-affine, 3 fp16.

constexpr int kQuantKindInt = 1;
constexpr int kQuantKindAffine = 2;
constexpr int kQuantKindF16 = 3;
constexpr int kQuantMaxCandidates = 4;

// The reconstruction of one code (docs/FORMAT.md section 6): kInt (kind 1) (float(q) - float(2^w - 1)
// * 0.5f) * scale; kIntAffine (kind 2) shift + float(q) * scale; other kinds 0. scale and shift are the
// stored fp16 parameters in fp32; each operation is rounded on its own.
KVTC_HD inline float dequantize_code(uint32_t code, int kind, int width_bits, float scale, float shift) {
  if (kind == kQuantKindInt) return f_mul(f_sub(float(code), f_mul(float((1 << width_bits) - 1), 0.5f)), scale);
  if (kind == kQuantKindAffine) return f_add(shift, f_mul(float(code), scale));
  return 0.0f;
}

KVTC_HD inline float gaussian_step(int width) {  // quant.cpp kGaussianStep
  switch (width) {
    case 1: return 1.596f;
    case 2: return 0.9957f;
    case 3: return 0.5860f;
    case 4: return 0.3352f;
    case 5: return 0.1881f;
    case 6: return 0.1041f;
    case 7: return 0.0569f;
    default: return 0.0308f;
  }
}

KVTC_HD inline uint16_t step_to_f16_bits(float step) {
  if (step != step) return 0x7bff;
  if (!(step > 0.0f)) return 0x0001;
  const uint16_t h = f32_to_f16_bits(step);
  if (h >= 0x7c00) return 0x7bff;
  return h == 0 ? uint16_t(0x0001) : h;
}

KVTC_HD inline uint16_t shift_to_f16_bits(float shift) {
  if (shift != shift) return 0;
  const float c = shift < -65504.0f ? -65504.0f : (65504.0f < shift ? 65504.0f : shift);  // std::clamp
  return f32_to_f16_bits(c);
}

// An fp16 component value as stored: saturated, NaN as 0.
KVTC_HD inline uint16_t f16_symbol(float x) {
  const float c = x < -65504.0f ? -65504.0f : (65504.0f < x ? 65504.0f : x);
  return f32_to_f16_bits(c != c ? 0.0f : c);
}

struct QuantStats {
  float amax, min, max;
  double sum, sum_sq, sum_abs;
};


KVTC_HD inline QuantStats quant_group_stats(const float* x, int64_t stride, int n) {
  QuantStats s = {0.0f, 0.0f, 0.0f, 0.0, 0.0, 0.0};
  if (n <= 0) return s;
  const float inf = bits_f32(0x7f800000u);
  float amax = 0.0f, mn = inf, mx = -inf, sum = 0.0f, sum_sq = 0.0f, sum_abs = 0.0f;
  int i = 0;
  if (n >= 8) {
    float la[4] = {0.0f, 0.0f, 0.0f, 0.0f}, lmn[4] = {inf, inf, inf, inf}, lmx[4] = {-inf, -inf, -inf, -inf};
    float ls[4] = {0.0f, 0.0f, 0.0f, 0.0f}, lq[4] = {0.0f, 0.0f, 0.0f, 0.0f}, lb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (; i + 4 <= n; i += 4) {
      for (int k = 0; k < 4; ++k) {
        const float v = x[int64_t(i + k) * stride];
        const float a = abs_bits(v);
        la[k] = a > la[k] ? a : la[k];
        lmn[k] = v < lmn[k] ? v : lmn[k];
        lmx[k] = v > lmx[k] ? v : lmx[k];
        ls[k] = f_add(ls[k], v);
        lq[k] = f_add(lq[k], f_mul(v, v));
        lb[k] = f_add(lb[k], a);
      }
    }
    for (int k = 0; k < 4; ++k) {
      amax = la[k] > amax ? la[k] : amax;
      mn = lmn[k] < mn ? lmn[k] : mn;
      mx = lmx[k] > mx ? lmx[k] : mx;
    }
    sum = f_add(f_add(ls[0], ls[1]), f_add(ls[2], ls[3]));
    sum_sq = f_add(f_add(lq[0], lq[1]), f_add(lq[2], lq[3]));
    sum_abs = f_add(f_add(lb[0], lb[1]), f_add(lb[2], lb[3]));
  }
  for (; i < n; ++i) {
    const float v = x[int64_t(i) * stride];
    const float a = abs_bits(v);
    amax = a > amax ? a : amax;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    sum = f_add(sum, v);
    sum_sq = f_add(sum_sq, f_mul(v, v));
    sum_abs = f_add(sum_abs, a);
  }
  s.amax = amax;
  s.min = mn;
  s.max = mx;
  s.sum = sum;
  s.sum_sq = sum_sq;
  s.sum_abs = sum_abs;
  return s;
}

KVTC_HD inline int quant_code_of(float v, float top) {
  v = v > 0.0f ? v : 0.0f;
  v = v < top ? v : top;
  return int(v);
}

// quant.cpp's Mapper.
struct QuantMapper {
  bool is_int;
  float scale, shift, inv, half, bias, top;
  KVTC_HD int code(float x) const {
    return is_int ? quant_code_of(f_add(f_mul(x, inv), bias), top)
                  : quant_code_of(f_add(f_mul(f_sub(x, shift), inv), 0.5f), top);
  }
  KVTC_HD float value(int q) const {
    return is_int ? f_mul(f_sub(float(q), half), scale) : f_add(shift, f_mul(float(q), scale));
  }
};

KVTC_HD inline QuantMapper make_quant_mapper(bool is_int, int n_levels, float scale, float shift) {
  QuantMapper m;
  m.is_int = is_int;
  m.scale = scale;
  m.shift = shift;
  m.inv = f_div(1.0f, scale);
  m.half = f_mul(float(n_levels - 1), 0.5f);
  m.bias = f_add(f_mul(float(n_levels - 1), 0.5f), 0.5f);
  m.top = f_add(float(n_levels - 1), 0.5f);
  return m;
}

// quant.cpp's candidate_error (the SSE2 order).
KVTC_HD inline float quant_candidate_error(const float* x, int64_t stride, int n, const QuantMapper& m) {
  float a0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, a1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 4; ++k) {
      const float v0 = x[int64_t(i + k) * stride], v1 = x[int64_t(i + 4 + k) * stride];
      const float d0 = f_sub(v0, m.value(m.code(v0))), d1 = f_sub(v1, m.value(m.code(v1)));
      a0[k] = f_add(a0[k], f_mul(d0, d0));
      a1[k] = f_add(a1[k], f_mul(d1, d1));
    }
  }
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const float v = x[int64_t(i + k) * stride];
      const float d = f_sub(v, m.value(m.code(v)));
      a0[k] = f_add(a0[k], f_mul(d, d));
    }
  }
  float err = f_add(f_add(f_add(a0[0], a1[0]), f_add(a0[1], a1[1])), f_add(f_add(a0[2], a1[2]), f_add(a0[3], a1[3])));
  for (; i < n; ++i) {
    const float v = x[int64_t(i) * stride];
    const float d = f_sub(v, m.value(m.code(v)));
    err = f_add(err, f_mul(d, d));
  }
  return err;
}

struct QuantParams {
  uint16_t scale_f16;
  uint16_t shift_f16;
};

// quant.cpp's candidates(); returns how many were written to out.
KVTC_HD inline int quant_candidates(const float* x, int64_t stride, int n, const QuantStats& s, int kind, int width,
                                    QuantParams* out) {
  const int n_levels = 1 << width;
  const float half = f_mul(float(n_levels - 1), 0.5f);
  const bool search = n >= 3;
  const float clip[2] = {1.0f, 0.7f};
  int k = 0;
  if (kind == kQuantKindInt) {
    if (width == 1) {
      out[k++] = {step_to_f16_bits(float(d_div(d_mul(2.0, s.sum_abs), double(n)))), 0};
      return k;
    }
    for (int c = 0; c < 2; ++c) {
      out[k++] = {step_to_f16_bits(f_div(f_mul(s.amax, clip[c]), half)), 0};
      if (!search) return k;
    }
    const float rms = float(d_sqrt(d_div(s.sum_sq, double(n))));
    out[k++] = {step_to_f16_bits(f_mul(gaussian_step(width), rms)), 0};
    return k;
  }
  const float mean = float(d_div(s.sum, double(n)));
  if (width == 1 && search) {
    double mad = 0.0;
    for (int i = 0; i < n; ++i) mad = d_add(mad, d_abs(d_sub(double(x[int64_t(i) * stride]), double(mean))));
    const float mm = float(d_div(mad, double(n)));
    out[k++] = {step_to_f16_bits(f_mul(2.0f, mm)), shift_to_f16_bits(f_sub(mean, mm))};
  }
  const float mid = f_mul(0.5f, f_add(s.min, s.max));
  const float half_range = f_mul(0.5f, f_sub(s.max, s.min));
  for (int c = 0; c < 2; ++c) {
    const float hw = f_mul(half_range, clip[c]);
    out[k++] = {step_to_f16_bits(f_div(f_mul(2.0f, hw), float(n_levels - 1))), shift_to_f16_bits(f_sub(mid, hw))};
    if (!search || width == 1) return k;
  }
  const double v = d_sub(d_div(s.sum_sq, double(n)), d_mul(double(mean), double(mean)));
  const double var = 0.0 < v ? v : 0.0;  // std::max(0.0, v)
  const float step = f_mul(gaussian_step(width), float(d_sqrt(var)));
  out[k++] = {step_to_f16_bits(step), shift_to_f16_bits(f_sub(mean, f_mul(half, step)))};
  return k;
}

// quantize_token() for the n values x[i * x_stride] of one token in one int or int-affine group:
// codes[i * codes_stride] receives each code, the return value the parameters to store. Other kinds
// or n <= 0: no codes written, parameters 0.
KVTC_HD inline QuantParams quantize_group(const float* x, int64_t x_stride, int n, int kind, int width_bits,
                                          uint16_t* codes, int64_t codes_stride) {
  QuantParams best = {0, 0};
  if ((kind != kQuantKindInt && kind != kQuantKindAffine) || n <= 0) return best;
  const int width = width_bits < 1 ? 1 : (width_bits > 8 ? 8 : width_bits);
  const bool is_int = kind == kQuantKindInt;
  const QuantStats s = quant_group_stats(x, x_stride, n);
  if (is_int ? !(s.amax > 0.0f) : !(s.max > s.min)) {
    // All zeros (int) or constant (int-affine): the fill code reconstructs them.
    best.shift_f16 = is_int ? uint16_t(0) : shift_to_f16_bits(s.min);
    const uint16_t fill = is_int ? uint16_t(1u << (width - 1)) : uint16_t(0);
    for (int i = 0; i < n; ++i) codes[int64_t(i) * codes_stride] = fill;
    return best;
  }
  QuantParams cand[kQuantMaxCandidates];
  const int n_cand = quant_candidates(x, x_stride, n, s, kind, width, cand);
  best = cand[0];
  if (n_cand > 1) {
    float best_err = 0.0f;
    for (int c = 0; c < n_cand; ++c) {
      const QuantMapper m =
          make_quant_mapper(is_int, 1 << width, f16_bits_to_f32(cand[c].scale_f16), f16_bits_to_f32(cand[c].shift_f16));
      const float e = quant_candidate_error(x, x_stride, n, m);
      if (c == 0 || e < best_err) {  // ties: the first
        best_err = e;
        best = cand[c];
        if (e == 0.0f) break;
      }
    }
  }
  const QuantMapper m =
      make_quant_mapper(is_int, 1 << width, f16_bits_to_f32(best.scale_f16), f16_bits_to_f32(best.shift_f16));
  for (int i = 0; i < n; ++i) codes[int64_t(i) * codes_stride] = uint16_t(m.code(x[int64_t(i) * x_stride]));
  return best;
}

// ---------------------------------------------------------------------------------------------
// Raw chunk bytes (docs/FORMAT.md section 5).

// A run of components of one group inside a codes chunk (dropped groups have none).
struct CodesSpan {
  uint32_t first_component = 0;  // row of the symbol array
  uint32_t n_components = 0;
  uint32_t aligned_bits = 0;     // container width 1, 2, 4, 8, or 16 for fp16 (byte planes)
  uint32_t dense_bits = 0;       // width_bits, or 16 for fp16
  uint64_t byte_begin = 0;       // aligned layout: offset of the span's first byte in the chunk
  uint64_t bit_begin = 0;        // dense layout: offset of the span's first bit in the chunk
};

// Container width of a code of width w (docs/FORMAT.md section 5): 1, 2, 4, 4, 8, 8, 8, 8.
KVTC_HD inline uint32_t container_bits(uint32_t width_bits) {
  return width_bits <= 1 ? 1u : width_bits == 2 ? 2u : width_bits <= 4 ? 4u : 8u;
}

// The spans of a codes chunk with components [c0, c1) and n tokens, from a stream's groups (any type
// with first_component, n_components, kind (GroupKind values) and width_bits; host code): writes them
// to out (when not null), returns how many, and sets the aligned size in bytes and the dense one in bits.
template <typename GroupT>
inline uint32_t codes_spans(const GroupT* groups, size_t n_groups, uint32_t c0, uint32_t c1, uint64_t n,
                            CodesSpan* out, uint64_t* aligned_bytes, uint64_t* dense_bits) {
  uint32_t count = 0;
  uint64_t bytes = 0, bits = 0;
  for (size_t gi = 0; gi < n_groups; ++gi) {
    const GroupT& g = groups[gi];
    const uint32_t b = c0 > g.first_component ? c0 : g.first_component;
    const uint32_t g_end = g.first_component + g.n_components, e = c1 < g_end ? c1 : g_end;
    if (b >= e || int(g.kind) == 0) continue;  // outside, or dropped
    CodesSpan s;
    s.first_component = b;
    s.n_components = e - b;
    const bool f16 = int(g.kind) == kQuantKindF16;
    s.aligned_bits = f16 ? 16u : container_bits(g.width_bits);
    s.dense_bits = f16 ? 16u : uint32_t(g.width_bits);
    s.byte_begin = bytes;
    s.bit_begin = bits;
    bytes += uint64_t(s.n_components) * (f16 ? 2 * n : (n * s.aligned_bits + 7) / 8);
    bits += uint64_t(s.n_components) * n * s.dense_bits;
    if (out) out[count] = s;
    ++count;
  }
  *aligned_bytes = bytes;
  *dense_bits = bits;
  return count;
}

enum PackKind : uint32_t { kPackSide = 0, kPackAligned = 1, kPackDense = 2, kPackExact = 3 };

// One raw chunk to write. Symbols are component-major: sym[row * ld + column], column = token -
// n_head_exact; side rows are the stream's side values in chunk order (per group: scales, then
// shifts for int-affine); exact elements come from the stream's fp32 cache [L][H][T][D].
struct PackJob {
  uint8_t* dst = nullptr;
  const uint16_t* sym = nullptr;  // side / codes
  const float* cache = nullptr;   // exact
  uint64_t ld = 0;                // side / codes: row stride of sym
  uint64_t col0 = 0;              // side / codes: column of the chunk's first token
  uint64_t cache_tokens = 0;      // exact: T
  uint64_t token0 = 0;            // exact: first token
  uint32_t raw_bytes = 0;
  uint32_t kind = kPackSide;
  uint32_t n_tokens = 0;
  uint32_t n_rows = 0;            // side: rows
  uint32_t span_begin = 0, span_end = 0;  // codes: spans[span_begin, span_end), ordered by component
  uint32_t layer = 0, n_heads = 0, head_dim = 0, dtype = 0;  // exact; dtype as DType (0 bf16, 1 f16, 2 f32)
};

// Index of the last span in [b, e) whose begin (bytes or bits) is <= pos; spans are ordered.
KVTC_HD inline uint32_t find_span(const CodesSpan* spans, uint32_t b, uint32_t e, uint64_t pos, bool bits) {
  while (e - b > 1) {
    const uint32_t mid = b + (e - b) / 2;
    if ((bits ? spans[mid].bit_begin : spans[mid].byte_begin) <= pos) b = mid;
    else e = mid;
  }
  return b;
}

// Byte i of the chunk job j describes (0 past its end).
KVTC_HD inline uint8_t pack_job_byte(const PackJob& j, const CodesSpan* spans, uint64_t i) {
  if (i >= j.raw_bytes) return 0;
  const uint64_t n = j.n_tokens;
  if (j.kind == kPackSide) {
    const uint64_t count = n * j.n_rows;
    const uint64_t plane = i / count, v = i - plane * count;
    const uint16_t value = j.sym[(v / n) * j.ld + j.col0 + v % n];
    return uint8_t(plane ? value >> 8 : value & 0xffu);
  }
  if (j.kind == kPackExact) {
    const uint64_t d = j.head_dim, count = uint64_t(j.n_heads) * n * d;
    const uint64_t plane = i / count, e = i - plane * count;
    const uint64_t h = e / (n * d), rem = e - h * n * d;
    const float x = j.cache[((uint64_t(j.layer) * j.n_heads + h) * j.cache_tokens + j.token0 + rem / d) * d + rem % d];
    const uint32_t bits = j.dtype == 2 ? f32_bits(x) : j.dtype == 1 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
    return uint8_t((bits >> (8 * plane)) & 0xffu);
  }
  if (j.span_begin >= j.span_end) return 0;
  if (j.kind == kPackAligned) {
    const CodesSpan& s = spans[find_span(spans, j.span_begin, j.span_end, i, false)];
    const uint32_t cw = s.aligned_bits;
    const uint64_t per = cw == 16 ? 2 * n : (n * cw + 7) / 8;
    const uint64_t off = i - s.byte_begin, comp = off / per, ib = off - comp * per;
    if (comp >= s.n_components) return 0;
    const uint16_t* row = j.sym + (s.first_component + comp) * j.ld + j.col0;
    if (cw == 16) return uint8_t(ib < n ? row[ib] & 0xffu : row[ib - n] >> 8);
    if (cw == 8) return uint8_t(row[ib]);
    const uint32_t per_byte = 8 / cw;
    uint32_t v = 0;
    for (uint32_t r = 0; r < per_byte; ++r) {
      const uint64_t t = ib * per_byte + r;
      if (t < n) v |= uint32_t(row[t]) << (r * cw);
    }
    return uint8_t(v);
  }
  // Dense: bits [8i, 8i + 8) of the concatenated codes, least significant first.
  const CodesSpan& last = spans[j.span_end - 1];
  const uint64_t total_bits = last.bit_begin + uint64_t(last.n_components) * n * last.dense_bits;
  const uint64_t q0 = 8 * i, q1 = q0 + 8 < total_bits ? q0 + 8 : total_bits;
  uint32_t out = 0;
  uint32_t si = j.span_begin;
  for (uint64_t q = q0; q < q1;) {
    si = find_span(spans, si, j.span_end, q, true);
    const CodesSpan& s = spans[si];
    const uint32_t bits = s.dense_bits;
    const uint64_t r = q - s.bit_begin, idx = r / bits, b = r - idx * bits;
    const uint64_t comp = idx / n, t = idx - comp * n;
    const uint32_t value = j.sym[(s.first_component + comp) * j.ld + j.col0 + t];
    const uint64_t take = bits - b < q1 - q ? bits - b : q1 - q;
    out |= ((value >> b) & ((1u << take) - 1u)) << (q - q0);
    q += take;
  }
  return uint8_t(out);
}

}  // namespace kvtc
