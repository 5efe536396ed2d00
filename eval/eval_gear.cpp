// GEAR (Kang et al., 2024, arXiv:2403.05527, "GEAR: An Efficient KV Cache Compression Recipe for
// Near-Lossless Generative Inference of LLM"): per layer, stream and KV head, the 2% largest-magnitude
// entries are kept exactly as sparse outliers, the rest is quantised KIVI-style (keys per channel over
// groups of 32 tokens, values per token over groups of 32 channels, asymmetric, 4 or 2 bits), and the
// quantisation residual is approximated at rank 4 (truncated SVD) and added back.
// Stored: the codes, an fp16 scale and zero point per group, each outlier as an fp16 value and a 4-byte
// index, and both rank-4 factors in fp16. The knob is the bit width (4: ~2.4x, 2: ~3.4x); compressed
// tokens left over after the last full group of 32 stay at 16 bits.
#include <algorithm>
#include <cmath>

#include <cblas.h>
#include <lapacke.h>

#include "eval/eval_method.hpp"
#include "util/half.hpp"

namespace kvtc::engine {

namespace {

constexpr int kGroup = 32;
constexpr int kRank = 4;
constexpr double kOutlierShare = 0.02;

// Asymmetric quantisation of n values spaced `stride` apart, skipping outliers (flag set).
void quantize_group(float* x, const uint8_t* outlier, int64_t n, int64_t stride, int bits) {
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = 0; i < n; ++i)
    if (!outlier[i * stride]) {
      lo = std::min(lo, x[i * stride]);
      hi = std::max(hi, x[i * stride]);
    }
  if (lo > hi) return;  // all outliers
  const float levels = float((1 << bits) - 1);
  const float scale = round_to_f16((hi - lo) / levels), zero = round_to_f16(lo);
  for (int64_t i = 0; i < n; ++i) {
    if (outlier[i * stride]) continue;
    const float q = scale == 0 ? 0.0f : std::min(levels, std::max(0.0f, std::nearbyint((x[i * stride] - zero) / scale)));
    x[i * stride] = q * scale + zero;
  }
}

class Gear : public CacheMethod {
 public:
  explicit Gear(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "gear"; }
  std::string reference() const override { return "GEAR, Kang et al., 2024 (arXiv:2403.05527), KIVI-style grouping"; }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int hd = cfg.head_dim;
    const int64_t n = (r.n() / kGroup) * kGroup;  // grouped tokens
    const int64_t rank = std::min<int64_t>({kRank, n, hd});
    const int bits = bits_for(n, hd, target_ratio);
    double stored = double(r.n() - n) * raw_bytes_per_token(cfg);
    if (n > 0) {
      const int64_t n_out = int64_t(std::floor(kOutlierShare * double(n) * hd));
      std::vector<float> orig(size_t(n) * hd), resid(size_t(n) * hd), sv(static_cast<size_t>(std::min<int64_t>(n, hd)));
      std::vector<float> u(size_t(n) * std::min<int64_t>(n, hd)), vt(size_t(std::min<int64_t>(n, hd)) * hd);
      std::vector<uint8_t> outlier(size_t(n) * hd);
      std::vector<int64_t> order(size_t(n) * hd);
      for (int l = 0; l < cfg.n_layers; ++l)
        for (int h = 0; h < cfg.n_kv_heads; ++h)
          for (int s = 0; s < 2; ++s) {
            float* x = (s == 0 ? st->k(l, h) : st->v(l, h)) + r.begin * hd;  // [n][hd]
            std::copy(x, x + n * hd, orig.begin());
            // Sparse outliers: the n_out entries of largest magnitude, kept as fp16.
            for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
            std::nth_element(order.begin(), order.begin() + n_out, order.end(),
                             [&](int64_t a, int64_t b) { return std::fabs(orig[a]) > std::fabs(orig[b]); });
            std::fill(outlier.begin(), outlier.end(), uint8_t(0));
            for (int64_t i = 0; i < n_out; ++i) outlier[order[i]] = 1;
            if (s == 0) {
              for (int64_t t0 = 0; t0 < n; t0 += kGroup)
                for (int d = 0; d < hd; ++d) quantize_group(x + t0 * hd + d, outlier.data() + t0 * hd + d, kGroup, hd, bits);
            } else {
              for (int64_t t = 0; t < n; ++t)
                for (int d0 = 0; d0 < hd; d0 += kGroup)
                  quantize_group(x + t * hd + d0, outlier.data() + t * hd + d0, std::min(kGroup, hd - d0), 1, bits);
            }
            for (int64_t i = 0; i < n * hd; ++i) {
              if (outlier[i]) x[i] = round_to_f16(orig[i]);
              resid[i] = orig[i] - x[i];
            }
            // Rank-r approximation of the residual, added back.
            const int64_t k = std::min<int64_t>(n, hd);
            if (LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', int(n), hd, resid.data(), hd, sv.data(), u.data(), int(k), vt.data(),
                               hd) != 0)
              return internal_error("gear: LAPACKE_sgesdd failed");
            std::vector<float> us(size_t(n) * rank), vr(size_t(rank) * hd);
            for (int64_t t = 0; t < n; ++t)
              for (int64_t j = 0; j < rank; ++j) us[t * rank + j] = round_to_f16(u[t * k + j] * sv[j]);
            for (int64_t j = 0; j < rank; ++j)
              for (int d = 0; d < hd; ++d) vr[j * hd + d] = round_to_f16(vt[j * hd + d]);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), hd, int(rank), 1.0f, us.data(), int(rank),
                        vr.data(), hd, 1.0f, x, hd);
            stored += double(n) * hd * bits / 8.0 + double(n) * hd / kGroup * 4.0 + double(n_out) * 6.0 +
                      double(rank) * double(n + hd) * 2.0;
          }
    }
    return make_result(model, *st, r, stored, setting(bits));
  }
  std::string setting_for(const Model& model, const KvState& st, double target_ratio) const override {
    const int64_t n = (compressed_range(st, c_).n() / kGroup) * kGroup;
    return setting(bits_for(n, model.config().head_dim, target_ratio));
  }

 private:
  // The bit width: 4 where it reaches the target, else 2 (n grouped tokens of head_dim channels).
  static int bits_for(int64_t n, int hd, double target_ratio) {
    const int64_t rank = std::min<int64_t>({kRank, n, hd});
    auto bits_per_element = [&](int b) {
      return b + 32.0 / kGroup + kOutlierShare * 48.0 + (n > 0 ? double(rank) * (n + hd) * 16.0 / (double(n) * hd) : 0.0);
    };
    return 16.0 / bits_per_element(4) >= target_ratio ? 4 : 2;
  }
  static std::string setting(int bits) { return std::to_string(bits) + "-bit, rank 4, 2% outliers"; }
  MethodConfig c_;
};

}  // namespace

std::unique_ptr<CacheMethod> make_gear(const MethodConfig& c) { return std::make_unique<Gear>(c); }

}  // namespace kvtc::engine
