// Per-group scalar quantisation of PCA coefficients: the one definition used by the bit allocator
// (to measure error), the encoders, the reference decoder and the CUDA backend. Bit-exactness
// between them depends on everyone calling these functions (or mirroring them exactly).
#pragma once

#include <cstdint>

namespace kvtc {

// What a group of consecutive components is stored as. Values are part of the container format.
enum class GroupKind : uint8_t {
  kDropped = 0,    // not stored; reconstructed as 0 (the mean)
  kInt = 1,        // width-bit codes, per-token fp16 scale; levels (q - (2^w - 1) / 2) * scale
  kIntAffine = 2,  // width-bit codes, per-token fp16 shift and scale; levels shift + q * scale
  kFloat16 = 3,    // each value as IEEE fp16; no side information
};

constexpr int kMaxWidthBits = 8;

// "int", "int-affine", "fp16" or "dropped": the names reports and `kvtc inspect` use.
inline const char* group_kind_name(GroupKind kind) {
  switch (kind) {
    case GroupKind::kInt: return "int";
    case GroupKind::kIntAffine: return "int-affine";
    case GroupKind::kFloat16: return "fp16";
    default: return "dropped";
  }
}

// Per-token side information bits of one group (independent of its size).
inline int side_bits_per_token(GroupKind kind) {
  return kind == GroupKind::kInt ? 16 : kind == GroupKind::kIntAffine ? 32 : 0;
}
// Bits one component of the group costs per token (before entropy coding).
inline int value_bits(GroupKind kind, int width_bits) {
  return kind == GroupKind::kFloat16 ? 16 : (kind == GroupKind::kDropped ? 0 : width_bits);
}

// The per-token parameters of one group, as stored (fp16 bit patterns).
struct TokenQuantParams {
  uint16_t scale_f16 = 0;
  uint16_t shift_f16 = 0;  // kIntAffine only
};

// Quantises the n values of one token in one group to codes in [0, 2^width - 1] and returns the
// parameters to store. The encoder tries a small fixed set of step sizes (clipping the largest
// values when that lowers the error) and keeps the one with the least squared error after fp16
// rounding of the parameters. Deterministic. kind must be kInt or kIntAffine; 1 <= width <= 8.
// With N = 2^width, step s and inv = 1.0f / s (fp32), a value x gets the code
//   kInt:       t = x * inv + (float(N - 1) * 0.5f + 0.5f)
//   kIntAffine: t = (x - shift) * inv + 0.5f
// clamped to [0, N - 0.5] (NaN -> 0) and truncated: the nearest level, the extremes for clipped values.
// Steps are positive finite fp16 values (subnormals allowed, saturating at 65504). A group of zeros
// (kInt) gets scale 0 and codes N/2; a constant group (kIntAffine) gets scale 0, shift = the value in
// fp16, codes 0.
TokenQuantParams quantize_token(const float* x, int n, GroupKind kind, int width_bits, uint8_t* codes);

// Reconstructs values from codes and parameters.
void dequantize_token(const uint8_t* codes, int n, GroupKind kind, int width_bits,
                      TokenQuantParams params, float* out);

// The reconstruction of one code: what dequantize_token computes per value (for kernels to mirror).
// In fp32, each operation rounded separately (no fused multiply-add):
//   kInt:       (float(code) - float((1 << width_bits) - 1) * 0.5f) * scale
//   kIntAffine: shift + float(code) * scale
// (other kinds: 0). scale and shift are the fp16 parameters converted to fp32.
float dequantize_value(uint8_t code, GroupKind kind, int width_bits, float scale, float shift);

// Squared error of quantising then dequantising x with the same rules (no codes kept): the sum over
// the n values of (double(x) - double(reconstruction))^2. Also defined for the other kinds: kDropped
// gives the energy sum x^2, kFloat16 the error of rounding each value to fp16.
double quantization_error(const float* x, int n, GroupKind kind, int width_bits);

// quantization_error of the same n values for `count` (kind, width) pairs at once, sharing the pass
// that gathers the group's statistics (what the allocator's measurement needs):
// out[i] == quantization_error(x, n, kinds[i], widths[i]).
void quantization_errors(const float* x, int n, int count, const GroupKind* kinds, const uint8_t* widths,
                         double* out);

}  // namespace kvtc
