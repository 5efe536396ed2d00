// Low-rank baselines, fitted per prompt (no calibration):
//   svd  per layer and stream, the compressed tokens as a matrix [tokens, kv_heads * head_dim] replaced
//        by its best rank-r approximation (truncated SVD), as in the per-token low-rank KV methods
//        (e.g. Palu, Chang et al., 2024, arXiv:2407.21118, applied here without calibration);
//   xkv  the same with the matrices of 4 adjacent layers side by side, so that they share one set of
//        left singular vectors (xKV, Chang et al., 2025, arXiv:2503.18893).
// Keys are taken before RoPE (rotated back with the model's own angles) and rotated again after
// reconstruction, since RoPE spreads a low-rank key space over all frequencies. Stored: both factors
// in fp16 (U with the singular values folded in, and V^T): r * (tokens + columns) * 2 bytes per
// matrix; the rank is the largest that fits the target.
#include <algorithm>
#include <cmath>

#include <cblas.h>
#include <lapacke.h>

#include "engine/eval_method.hpp"
#include "engine/kernels.hpp"
#include "util/half.hpp"

namespace kvtc::engine {

namespace {

class LowRank : public CacheMethod {
 public:
  LowRank(const MethodConfig& c, int group) : c_(c), group_(group) {}
  std::string name() const override { return group_ == 1 ? "svd" : "xkv"; }
  std::string reference() const override {
    return group_ == 1 ? "per-layer truncated SVD per prompt (as Palu, arXiv:2407.21118, without calibration)"
                       : "xKV cross-layer SVD, groups of 4 layers (arXiv:2503.18893)";
  }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int64_t n = r.n();
    if (n == 0) return make_result(model, *st, r, 0.0, "nothing to compress");
    const int hd = cfg.head_dim, KV = cfg.n_kv_heads, half = hd / 2;
    const int64_t d_layer = int64_t(KV) * hd;
    const std::vector<float> inv_freq = cfg.rope_inv_freq();
    const bool interleaved = cfg.rope.style == RopeStyle::kInterleaved;
    // cos/sin of every compressed token's position, as the forward pass computed them.
    std::vector<float> cs(size_t(n) * half), sn(size_t(n) * half);
    for (int64_t t = 0; t < n; ++t)
      for (int i = 0; i < half; ++i) {
        const float angle = float(st->positions()[r.begin + t]) * inv_freq[i];
        cs[t * half + i] = float(std::cos(double(angle)));
        sn[t * half + i] = float(std::sin(double(angle)));
      }
    std::vector<float> neg_sn(sn.size());
    for (size_t i = 0; i < sn.size(); ++i) neg_sn[i] = -sn[i];

    double stored = 0;
    int64_t rank_used = 0;
    for (int l0 = 0; l0 < cfg.n_layers; l0 += group_) {
      const int g = std::min(group_, cfg.n_layers - l0);
      const int64_t D = d_layer * g;
      const int64_t full_rank = std::min<int64_t>(n, D);
      const int64_t rank = std::clamp<int64_t>(int64_t(std::floor(double(n) * D / (target_ratio * double(n + D)))), 1,
                                               full_rank);
      rank_used = rank;
      for (int s = 0; s < 2; ++s) {
        // Gather X [n][D]: layer-major blocks of [kv_heads * head_dim] per token.
        std::vector<float> x(size_t(n) * D);
        for (int gl = 0; gl < g; ++gl)
          for (int h = 0; h < KV; ++h) {
            const float* src = s == 0 ? st->k(l0 + gl, h) : st->v(l0 + gl, h);
            for (int64_t t = 0; t < n; ++t) {
              float* dst = x.data() + t * D + gl * d_layer + int64_t(h) * hd;
              std::copy(src + (r.begin + t) * hd, src + (r.begin + t + 1) * hd, dst);
              if (s == 0) rope_rotate(dst, cs.data() + t * half, neg_sn.data() + t * half, half, interleaved);
            }
          }
        std::vector<float> sv(static_cast<size_t>(full_rank)), u(size_t(n) * full_rank), vt(size_t(full_rank) * D);
        std::vector<float> work(x);
        const int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', int(n), int(D), work.data(), int(D), sv.data(), u.data(),
                                        int(full_rank), vt.data(), int(D));
        if (info != 0) return internal_error("svd: LAPACKE_sgesdd failed (" + std::to_string(info) + ")");
        // U_r * S_r and V_r^T, both rounded to fp16 as stored; X' = (U S)_r V^T_r.
        std::vector<float> us(size_t(n) * rank), vr(size_t(rank) * D);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t k = 0; k < rank; ++k) us[t * rank + k] = round_to_f16(u[t * full_rank + k] * sv[k]);
        for (int64_t k = 0; k < rank; ++k)
          for (int64_t j = 0; j < D; ++j) vr[k * D + j] = round_to_f16(vt[k * D + j]);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(D), int(rank), 1.0f, us.data(), int(rank),
                    vr.data(), int(D), 0.0f, x.data(), int(D));
        for (int gl = 0; gl < g; ++gl)
          for (int h = 0; h < KV; ++h) {
            float* dst = s == 0 ? st->k(l0 + gl, h) : st->v(l0 + gl, h);
            for (int64_t t = 0; t < n; ++t) {
              float* row = x.data() + t * D + gl * d_layer + int64_t(h) * hd;
              if (s == 0) rope_rotate(row, cs.data() + t * half, sn.data() + t * half, half, interleaved);
              std::copy(row, row + hd, dst + (r.begin + t) * hd);
            }
          }
        stored += double(rank) * double(n + D) * 2.0;
      }
    }
    return make_result(model, *st, r, stored, "rank " + std::to_string(rank_used));
  }

 private:
  MethodConfig c_;
  int group_;
};

}  // namespace

std::unique_ptr<CacheMethod> make_svd(const MethodConfig& c, int layers_per_group) {
  return std::make_unique<LowRank>(c, layers_per_group);
}

}  // namespace kvtc::engine
