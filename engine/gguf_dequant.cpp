// fp32 dequantisation of the ggml tensor types that GGUF models use, written from ggml-common.h's block
// layouts and ggml-quants.c's dequantize_row_* functions. Each value is computed with the same fp32
// operations in the same order as ggml (and gguf-py's gguf.quants, which matches it), so results are
// bit-identical: fp16 scales are widened exactly, products of a scale and a small integer are one
// rounding, and `d * q - m` is a multiply then a subtract. That last point relies on the compiler not
// fusing them into an FMA: engine/CMakeLists.txt compiles this file with -ffp-contract=off, and clang is
// also told so below.
#include <cstring>
#include <string>

#include "engine/gguf.hpp"
#include "util/half.hpp"
#include "util/status_macros.hpp"

#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace kvtc::engine {
namespace {

constexpr int kQK = 32;    // values per block of the legacy types (Q4_0 ... Q8_0)
constexpr int kQK_K = 256;  // values per super-block of the K types

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// F32, F16, BF16: one value per "block".
void dequant_f32(const uint8_t* src, int64_t n, float* out) {
  if (n > 0) std::memcpy(out, src, size_t(n) * 4);
}

void dequant_f16(const uint8_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = f16_at(src + 2 * i);
}

void dequant_bf16(const uint8_t* src, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    out[i] = bf16_to_f32(h);
  }
}

// block_q8_0: fp16 d, int8 qs[32]; y = q * d.
void dequant_q8_0(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 34, out += kQK) {
    const float d = f16_at(src);
    const auto* qs = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < kQK; ++j) out[j] = float(qs[j]) * d;
  }
}

// block_q4_0: fp16 d, qs[16]: value j in the low nibble of qs[j], value j + 16 in its high nibble;
// y = (q - 8) * d.
void dequant_q4_0(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 18, out += kQK) {
    const float d = f16_at(src);
    const uint8_t* qs = src + 2;
    for (int j = 0; j < kQK / 2; ++j) {
      out[j] = float((qs[j] & 0x0F) - 8) * d;
      out[j + kQK / 2] = float((qs[j] >> 4) - 8) * d;
    }
  }
}

// block_q4_1: fp16 d, fp16 m, qs[16] as Q4_0; y = q * d + m.
void dequant_q4_1(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 20, out += kQK) {
    const float d = f16_at(src);
    const float m = f16_at(src + 2);
    const uint8_t* qs = src + 4;
    for (int j = 0; j < kQK / 2; ++j) {
      out[j] = float(qs[j] & 0x0F) * d + m;
      out[j + kQK / 2] = float(qs[j] >> 4) * d + m;
    }
  }
}

// The fifth bits of a Q5 block: bit j of the little-endian uint32 qh belongs to value j.
int q5_value(const uint8_t* qs, uint32_t qh, int j) {
  const int low = j < kQK / 2 ? (qs[j] & 0x0F) : (qs[j - kQK / 2] >> 4);
  return low | int(((qh >> j) & 1u) << 4);
}

// block_q5_0: fp16 d, uint32 qh, qs[16]; y = (q - 16) * d.
void dequant_q5_0(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 22, out += kQK) {
    const float d = f16_at(src);
    uint32_t qh;
    std::memcpy(&qh, src + 2, 4);
    for (int j = 0; j < kQK; ++j) out[j] = float(q5_value(src + 6, qh, j) - 16) * d;
  }
}

// block_q5_1: fp16 d, fp16 m, uint32 qh, qs[16]; y = q * d + m.
void dequant_q5_1(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 24, out += kQK) {
    const float d = f16_at(src);
    const float m = f16_at(src + 2);
    uint32_t qh;
    std::memcpy(&qh, src + 4, 4);
    for (int j = 0; j < kQK; ++j) out[j] = float(q5_value(src + 8, qh, j)) * d + m;
  }
}

// The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of a Q4_K/Q5_K block
// (ggml's get_scale_min_k4): sub-blocks 0-3 use the low 6 bits of bytes j and j + 4; 4-7 take their
// low 4 bits from byte j + 4's nibbles and their top 2 bits from the spare high bits of bytes j - 4 and j.
void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// block_q4_K: fp16 d, fp16 dmin, scales[12], qs[128]. Eight sub-blocks of 32; each 64 values share 32
// bytes of qs, low nibbles first. y = (d * sc) * q - (dmin * m).
void dequant_q4_k(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 144) {
    const float d = f16_at(src);
    const float dmin = f16_at(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    for (int j = 0; j < kQK_K / 64; ++j, q += 32) {
      uint8_t sc, m;
      scale_min_k4(2 * j, scales, &sc, &m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      scale_min_k4(2 * j + 1, scales, &sc, &m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      for (int l = 0; l < 32; ++l) *out++ = d1 * float(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *out++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}

// block_q5_K: fp16 d, fp16 dmin, scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit per value:
// sub-block i takes bit i of qh[l].
void dequant_q5_k(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 176) {
    const float d = f16_at(src);
    const float dmin = f16_at(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* qh = src + 16;
    const uint8_t* ql = src + 48;
    for (int j = 0; j < kQK_K / 64; ++j, ql += 32) {
      uint8_t sc, m;
      scale_min_k4(2 * j, scales, &sc, &m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      scale_min_k4(2 * j + 1, scales, &sc, &m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      const int bit1 = 2 * j, bit2 = 2 * j + 1;
      for (int l = 0; l < 32; ++l) *out++ = d1 * float((ql[l] & 0x0F) | (((qh[l] >> bit1) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l) *out++ = d2 * float((ql[l] >> 4) | (((qh[l] >> bit2) & 1) << 4)) - m2;
    }
  }
}

// block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], fp16 d. Each half of 128
// values uses 64 bytes of ql, 32 of qh and 8 scales; scale per 16 values. y = (d * scale) * (q - 32).
void dequant_q6_k(const uint8_t* src, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b, src += 210) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(src + 192);
    const float d = f16_at(src + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, out += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        out[l] = d * float(sc[is]) * float(q1);
        out[l + 32] = d * float(sc[is + 2]) * float(q2);
        out[l + 64] = d * float(sc[is + 4]) * float(q3);
        out[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
    }
  }
}

struct Dequantiser {
  GgmlType type;
  void (*run)(const uint8_t* src, int64_t n_blocks, float* out);
};

constexpr Dequantiser kDequantisers[] = {
    {GgmlType::kF32, dequant_f32},   {GgmlType::kF16, dequant_f16},   {GgmlType::kBF16, dequant_bf16},
    {GgmlType::kQ8_0, dequant_q8_0}, {GgmlType::kQ4_0, dequant_q4_0}, {GgmlType::kQ4_1, dequant_q4_1},
    {GgmlType::kQ5_0, dequant_q5_0}, {GgmlType::kQ5_1, dequant_q5_1}, {GgmlType::kQ4_K, dequant_q4_k},
    {GgmlType::kQ5_K, dequant_q5_k}, {GgmlType::kQ6_K, dequant_q6_k},
};

const Dequantiser* find_dequantiser(uint32_t type) {
  for (const auto& d : kDequantisers)
    if (uint32_t(d.type) == type) return &d;
  return nullptr;
}

std::string supported_list() {
  std::string s;
  for (const auto& d : kDequantisers) s += (s.empty() ? "" : ", ") + ggml_type_name(uint32_t(d.type));
  return s;
}

}  // namespace

bool gguf_can_dequantize(uint32_t type) { return find_dequantiser(type) != nullptr; }

Status gguf_dequantize(uint32_t type, const uint8_t* src, size_t src_bytes, int64_t n_elements, float* out) {
  const Dequantiser* dq = find_dequantiser(type);
  const std::string name = ggml_type_name(type);
  if (dq == nullptr)
    return unsupported(name + ": tensor type not supported by the engine's dequantiser (supported: " +
                       supported_list() + ")");
  KVTC_ASSIGN_OR_RETURN(const GgmlBlock block, ggml_block(type));
  if (n_elements < 0 || n_elements % block.block_elements != 0)
    return invalid_argument(name + ": " + std::to_string(n_elements) + " values is not a whole number of " +
                            std::to_string(block.block_elements) + "-value blocks");
  const uint64_t n_blocks = uint64_t(n_elements / block.block_elements);
  // Compared by division, so that a huge n_elements cannot overflow the byte count.
  if (n_blocks > src_bytes / uint64_t(block.block_bytes))
    return corrupt(name + ": " + std::to_string(n_elements) + " values need " + std::to_string(n_blocks) +
                   " blocks of " + std::to_string(block.block_bytes) + " bytes, but only " + std::to_string(src_bytes) +
                   " bytes are there");
  if (n_blocks == 0) return Status::ok();
  if (src == nullptr || out == nullptr) return invalid_argument(name + ": null source or output buffer");
  dq->run(src, int64_t(n_blocks), out);
  return Status::ok();
}

}  // namespace kvtc::engine
