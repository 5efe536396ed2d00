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

#include "engine/kernels.hpp"
#include "eval/eval_method.hpp"
#include "util/half.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace {

// cos/sin of every compressed token's position, as the forward pass computed them.
struct Rotation {
  std::vector<float> cs, sn, neg_sn;
  int half = 0;
  bool interleaved = false;
  void unrope(float* row, int64_t t) const { rope_rotate(row, &cs[t * half], &neg_sn[t * half], half, interleaved); }
  void rope(float* row, int64_t t) const { rope_rotate(row, &cs[t * half], &sn[t * half], half, interleaved); }
};
Rotation rotation(const ModelConfig& cfg, const KvState& st, const CompressedRange& r) {
  Rotation rot;
  rot.half = cfg.head_dim / 2;
  rot.interleaved = cfg.rope.style == RopeStyle::kInterleaved;
  const std::vector<float> inv_freq = cfg.rope_inv_freq();
  const int64_t n = r.n();
  rot.cs.resize(size_t(n) * rot.half);
  rot.sn.resize(size_t(n) * rot.half);
  rope_angles(&st.positions()[size_t(r.begin)], n, inv_freq.data(), rot.half, rot.cs.data(), rot.sn.data());
  rot.neg_sn.resize(rot.sn.size());
  for (size_t j = 0; j < rot.sn.size(); ++j) rot.neg_sn[j] = -rot.sn[j];
  return rot;
}

// One prompt's factorisations: for each group of layers and each stream (K, V), U * S [n][full_rank]
// and V^T [full_rank][D] of the compressed tokens' matrix (keys unroped), in full precision; and the
// compressed tokens' rotation, which unroped the keys and ropes them again.
struct Factors : PreparedContext {
  struct Matrix {
    int64_t d = 0, full_rank = 0;
    std::vector<float> us, vt;
  };
  std::vector<Matrix> matrices;  // group-major, then stream
  Rotation rot;
};

class LowRank : public CacheMethod {
 public:
  LowRank(const MethodConfig& c, int group) : c_(c), group_(group) {}
  std::string name() const override { return group_ == 1 ? "svd" : "xkv"; }
  std::string reference() const override {
    return group_ == 1 ? "per-layer truncated SVD per prompt (as Palu, arXiv:2407.21118, without calibration)"
                       : "xKV cross-layer SVD, groups of 4 layers (arXiv:2503.18893)";
  }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    KVTC_ASSIGN_OR_RETURN(std::unique_ptr<PreparedContext> f, prepare(model, *st));
    return apply_prepared(model, st, target_ratio, f.get());
  }

  Result<std::unique_ptr<PreparedContext>> prepare(const Model& model, const KvState& st) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(st, c_);
    const int64_t n = r.n();
    auto f = std::make_unique<Factors>();
    if (n == 0) return std::unique_ptr<PreparedContext>(std::move(f));
    f->rot = rotation(cfg, st, r);
    const Rotation& rot = f->rot;
    const int hd = cfg.head_dim, KV = cfg.n_kv_heads;
    const int64_t d_layer = int64_t(KV) * hd;
    for (int l0 = 0; l0 < cfg.n_layers; l0 += group_) {
      const int g = std::min(group_, cfg.n_layers - l0);
      const int64_t D = d_layer * g, full_rank = std::min<int64_t>(n, D);
      for (int s = 0; s < 2; ++s) {
        // Gather X [n][D]: layer-major blocks of [kv_heads * head_dim] per token.
        std::vector<float> x(size_t(n) * D);
        for (int gl = 0; gl < g; ++gl)
          for (int h = 0; h < KV; ++h) {
            const float* src = s == 0 ? st.k(l0 + gl, h) : st.v(l0 + gl, h);
            for (int64_t t = 0; t < n; ++t) {
              float* dst = x.data() + t * D + gl * d_layer + int64_t(h) * hd;
              std::copy(src + (r.begin + t) * hd, src + (r.begin + t + 1) * hd, dst);
              if (s == 0) rot.unrope(dst, t);
            }
          }
        Factors::Matrix m;
        m.d = D;
        m.full_rank = full_rank;
        std::vector<float> sv(static_cast<size_t>(full_rank));
        m.us.resize(size_t(n) * full_rank);
        m.vt.resize(size_t(full_rank) * D);
        const int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', int(n), int(D), x.data(), int(D), sv.data(),
                                        m.us.data(), int(full_rank), m.vt.data(), int(D));
        if (info != 0) return internal_error("svd: LAPACKE_sgesdd failed (" + std::to_string(info) + ")");
        for (int64_t t = 0; t < n; ++t)
          for (int64_t k = 0; k < full_rank; ++k) m.us[t * full_rank + k] *= sv[k];
        f->matrices.push_back(std::move(m));
      }
    }
    return std::unique_ptr<PreparedContext>(std::move(f));
  }

  Result<MethodResult> apply_prepared(const Model& model, KvState* st, double target_ratio,
                                      const PreparedContext* prepared) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int64_t n = r.n();
    if (n == 0) return make_result(model, *st, r, 0.0, "nothing to compress");
    const auto* f = dynamic_cast<const Factors*>(prepared);
    const int64_t n_groups = (cfg.n_layers + group_ - 1) / group_;
    if (f == nullptr || int64_t(f->matrices.size()) != 2 * n_groups ||
        f->matrices[0].us.size() != size_t(n * f->matrices[0].full_rank))
      return invalid_argument(name() + ": prepared factors do not belong to this state");
    const Rotation& rot = f->rot;
    const int hd = cfg.head_dim, KV = cfg.n_kv_heads;
    const int64_t d_layer = int64_t(KV) * hd;
    double stored = 0;
    int64_t rank_used = 0;
    for (int l0 = 0, gi = 0; l0 < cfg.n_layers; l0 += group_, ++gi) {
      const int g = std::min(group_, cfg.n_layers - l0);
      for (int s = 0; s < 2; ++s) {
        const Factors::Matrix& m = f->matrices[size_t(2 * gi + s)];
        const int64_t D = m.d, full_rank = m.full_rank;
        const int64_t rank = std::clamp<int64_t>(
            int64_t(std::floor(double(n) * D / (target_ratio * double(n + D)))), 1, full_rank);
        rank_used = rank;
        // (U S)_r and V^T_r, both rounded to fp16 as stored; X' = (U S)_r V^T_r.
        std::vector<float> us(size_t(n) * rank), vr(size_t(rank) * D), x(size_t(n) * D);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t k = 0; k < rank; ++k) us[t * rank + k] = round_to_f16(m.us[t * full_rank + k]);
        for (int64_t k = 0; k < rank; ++k)
          for (int64_t j = 0; j < D; ++j) vr[k * D + j] = round_to_f16(m.vt[k * D + j]);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(D), int(rank), 1.0f, us.data(), int(rank),
                    vr.data(), int(D), 0.0f, x.data(), int(D));
        for (int gl = 0; gl < g; ++gl)
          for (int h = 0; h < KV; ++h) {
            float* dst = s == 0 ? st->k(l0 + gl, h) : st->v(l0 + gl, h);
            for (int64_t t = 0; t < n; ++t) {
              float* row = x.data() + t * D + gl * d_layer + int64_t(h) * hd;
              if (s == 0) rot.rope(row, t);
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
