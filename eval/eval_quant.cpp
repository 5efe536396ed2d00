// Quantisation baselines. Values are quantised and dequantised in place (what a decoder would give
// the attention kernel); the bytes counted are those of the stored codes and their scales.
//
//   int8 / int4  llama.cpp q8_0 / q4_0 (ggml-quants.c): per token and head, blocks of 32 elements along
//                head_dim, one fp16 scale per block: 8.5 and 4.5 bits per element (1.88x, 3.56x).
//   fp8          vLLM's fp8_e4m3 KV cache: one fp32 scale per layer and stream (amax / 448 of this
//                cache, i.e. ideal dynamic scaling), values as E4M3 (8 bits: 2x).
//   kivi         KIVI (Liu et al., ICML 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
//                Cache"): keys per channel over groups of 32 tokens, values per token over groups of 32
//                channels, asymmetric (fp16 scale and zero point per group: +1 bit per element), 2 or
//                4 bits; the newest tokens stay in full precision as its residual (the exact window
//                here) and so do compressed tokens left over after the last full group of 32.
// Discrete knobs (bits) are chosen as the smallest setting whose ratio reaches the target, or the
// highest-ratio setting when none does; the table shows the ratio achieved.
#include <cmath>
#include <cstring>

#include "eval/eval_method.hpp"
#include "util/half.hpp"

namespace kvtc::engine {

namespace {

constexpr int kBlock = 32;

float fp16(float x) { return round_to_f16(x); }

// llama.cpp quantize_row_q8_0 / dequantize_row_q8_0 on one block.
void q8_0_block(float* x, int n) {
  float amax = 0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  const float dh = fp16(d);
  for (int i = 0; i < n; ++i) x[i] = float(int(std::nearbyint(x[i] * id))) * dh;
}

// llama.cpp quantize_row_q4_0_ref: d = (signed value of largest magnitude) / -8, q = x/d + 8.5 in 0..15.
void q4_0_block(float* x, int n) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  const float d = max / -8.0f;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  const float dh = fp16(d);
  for (int i = 0; i < n; ++i) {
    const int q = std::min(15, int(x[i] * id + 8.5f));
    x[i] = float(q - 8) * dh;
  }
}

class IntBlockwise : public CacheMethod {
 public:
  IntBlockwise(const MethodConfig& c, int bits) : c_(c), bits_(bits) {}
  std::string name() const override { return bits_ == 8 ? "int8" : "int4"; }
  std::string reference() const override {
    return bits_ == 8 ? "llama.cpp q8_0 (ggml-quants.c)" : "llama.cpp q4_0 (ggml-quants.c)";
  }
  Result<MethodResult> apply(const Model& model, KvState* st, double) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int hd = cfg.head_dim;
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int h = 0; h < cfg.n_kv_heads; ++h)
        for (float* base : {st->k(l, h), st->v(l, h)})
          for (int64_t t = r.begin; t < r.end; ++t)
            for (int b0 = 0; b0 < hd; b0 += kBlock) {
              float* x = base + t * hd + b0;
              const int n = std::min(kBlock, hd - b0);
              if (bits_ == 8) q8_0_block(x, n);
              else q4_0_block(x, n);
            }
    const double elements = double(r.n()) * cfg.n_layers * cfg.n_kv_heads * hd * 2;
    const double blocks = double(r.n()) * cfg.n_layers * cfg.n_kv_heads * ((hd + kBlock - 1) / kBlock) * 2;
    const double bytes = elements * bits_ / 8.0 + blocks * 2.0;
    return make_result(model, *st, r, bytes, setting());
  }
  std::string setting_for(const Model&, const KvState&, double) const override { return setting(); }

 private:
  MethodConfig c_;
  std::string setting() const { return bits_ == 8 ? "q8_0" : "q4_0"; }
  int bits_;
};

// Nearest E4M3 value (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; max 448, no infinities),
// ties to even, saturating as vLLM's conversion does.
float to_e4m3(float v) {
  const float a = std::fabs(v);
  if (!(a > 0)) return 0.0f;
  if (a >= 448.0f) return std::copysign(448.0f, v);
  int e = std::ilogb(a);
  if (e < -6) e = -6;  // subnormals share the smallest normal exponent's step
  const float step = std::ldexp(1.0f, e - 3);
  const float q = std::nearbyint(a / step) * step;
  return std::copysign(std::min(q, 448.0f), v);
}

class Fp8 : public CacheMethod {
 public:
  explicit Fp8(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "fp8"; }
  std::string reference() const override { return "vLLM kv_cache_dtype=fp8_e4m3 with per-layer scales"; }
  Result<MethodResult> apply(const Model& model, KvState* st, double) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int hd = cfg.head_dim;
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int s = 0; s < 2; ++s) {
        float amax = 0;
        for (int h = 0; h < cfg.n_kv_heads; ++h) {
          const float* base = s == 0 ? st->k(l, h) : st->v(l, h);
          for (int64_t i = r.begin * hd; i < r.end * hd; ++i) amax = std::max(amax, std::fabs(base[i]));
        }
        const float scale = amax > 0 ? amax / 448.0f : 1.0f;
        for (int h = 0; h < cfg.n_kv_heads; ++h) {
          float* base = s == 0 ? st->k(l, h) : st->v(l, h);
          for (int64_t i = r.begin * hd; i < r.end * hd; ++i) base[i] = to_e4m3(base[i] / scale) * scale;
        }
      }
    const double elements = double(r.n()) * cfg.n_layers * cfg.n_kv_heads * hd * 2;
    return make_result(model, *st, r, elements + cfg.n_layers * 2 * 4.0, "e4m3");
  }
  std::string setting_for(const Model&, const KvState&, double) const override { return "e4m3"; }

 private:
  MethodConfig c_;
};

// Asymmetric b-bit quantisation of n values spaced `stride` apart, with fp16 scale and zero point.
void asym_group(float* x, int64_t n, int64_t stride, int bits) {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  const float levels = float((1 << bits) - 1);
  const float scale = fp16((hi - lo) / levels);
  const float zero = fp16(lo);
  if (scale == 0) {
    for (int64_t i = 0; i < n; ++i) x[i * stride] = zero;
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::min(levels, std::max(0.0f, std::nearbyint((x[i * stride] - zero) / scale)));
    x[i * stride] = q * scale + zero;
  }
}

class Kivi : public CacheMethod {
 public:
  explicit Kivi(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "kivi"; }
  std::string reference() const override { return "KIVI, Liu et al., ICML 2024 (arXiv:2402.02750)"; }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int hd = cfg.head_dim;
    const int bits = bits_for(target_ratio);
    const int64_t n_grouped = (r.n() / kBlock) * kBlock;  // the rest stays full precision
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int h = 0; h < cfg.n_kv_heads; ++h) {
        float* k = st->k(l, h);
        float* v = st->v(l, h);
        for (int64_t t0 = r.begin; t0 < r.begin + n_grouped; t0 += kBlock)
          for (int d = 0; d < hd; ++d) asym_group(k + t0 * hd + d, kBlock, hd, bits);  // per channel
        for (int64_t t = r.begin; t < r.begin + n_grouped; ++t)
          for (int d0 = 0; d0 < hd; d0 += kBlock) asym_group(v + t * hd + d0, std::min(kBlock, hd - d0), 1, bits);
      }
    const double per_head_token = 2.0 * hd;  // K and V elements of one token and head
    const double elements = double(n_grouped) * cfg.n_layers * cfg.n_kv_heads * per_head_token;
    const double groups = elements / kBlock;  // one (scale, zero) fp16 pair per 32 elements, K and V alike
    const double bytes = elements * bits / 8.0 + groups * 4.0 +
                         double(r.n() - n_grouped) * raw_bytes_per_token(cfg);
    return make_result(model, *st, r, bytes, std::to_string(bits) + "-bit");
  }
  std::string setting_for(const Model&, const KvState&, double target_ratio) const override {
    return std::to_string(bits_for(target_ratio)) + "-bit";
  }

 private:
  // 16 / (b + 1) over grouped tokens: 4 bits 3.2x, 2 bits 5.33x.
  static int bits_for(double target_ratio) { return 16.0 / (4 + 1) >= target_ratio ? 4 : 2; }
  MethodConfig c_;
};

}  // namespace

std::unique_ptr<CacheMethod> make_int_blockwise(const MethodConfig& c, int bits) {
  return std::make_unique<IntBlockwise>(c, bits);
}
std::unique_ptr<CacheMethod> make_fp8(const MethodConfig& c) { return std::make_unique<Fp8>(c); }
std::unique_ptr<CacheMethod> make_kivi(const MethodConfig& c) { return std::make_unique<Kivi>(c); }

}  // namespace kvtc::engine
