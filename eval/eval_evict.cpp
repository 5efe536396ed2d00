// Token eviction baselines: a kept token is stored exactly (16 bits); the others are gone.
//
//   streamingllm  StreamingLLM (Xiao et al., ICLR 2024, arXiv:2309.17453): attention sinks plus a window
//                 of the newest tokens; the budget of the compressed range extends the window.
//   h2o           H2O (Zhang et al., NeurIPS 2023, arXiv:2306.14048): per layer and KV head, the
//                 "heavy hitters" with the largest attention accumulated during the prefill (summed
//                 over the query heads of the group), plus the exact recent window.
//   snapkv        SnapKV (Li et al., 2024, arXiv:2404.14469): per layer and KV head, the tokens the
//                 last 32 queries of the prompt (its observation window) attend to most, after max
//                 pooling over 7 neighbouring tokens, plus the window.
// Per-head selections are applied as masks (KvState::mask_token) and their indices are counted at 4
// bytes per kept token and head; StreamingLLM keeps one contiguous range and needs none.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <cblas.h>

#include "eval/eval_method.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace {

constexpr double kIndexBytes = 4.0;

// Tokens per head that fit the budget of the compressed range: each costs K and V at 16 bits plus an
// index when `indexed`.
int64_t kept_per_head(const ModelConfig& cfg, int64_t n, double target_ratio, bool indexed) {
  const double raw_per_head_token = 2.0 * 2.0 * cfg.head_dim;
  const double cost = raw_per_head_token + (indexed ? kIndexBytes : 0.0);
  return std::min<int64_t>(n, int64_t(std::floor(double(n) * raw_per_head_token / (target_ratio * cost))));
}

// SnapKV: softmax attention of each observation query (the last kSnapKvObservation of the prompt,
// every query head of the group) over the keys it can see, summed, then max-pooled over 7 tokens.
void snapkv_scores(const ModelConfig& cfg, const KvState& st, const CompressedRange& r, int l, int g,
                   std::vector<float>* pooled) {
  constexpr int kPool = 7;
  const int64_t n_obs = st.n_captured_queries();
  const int hd = cfg.head_dim, H = cfg.n_heads, n_rep = cfg.n_rep();
  const int64_t n = st.n_tokens();
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<float> vote(size_t(r.n()), 0.0f), logits(static_cast<size_t>(n));
  const std::vector<float>& q = st.captured_queries(l);  // [n_obs][H * hd]
  const float* k = st.k(l, g);
  for (int64_t o = 0; o < n_obs; ++o) {
    const int64_t q_token = n - n_obs + o;  // its keys: 0 .. q_token
    for (int rr = 0; rr < n_rep; ++rr) {
      const float* qv = q.data() + o * int64_t(H) * hd + int64_t(g * n_rep + rr) * hd;
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(q_token + 1), hd, scale, k, hd, qv, 1, 0.0f, logits.data(), 1);
      float m = -INFINITY;
      for (int64_t j = 0; j <= q_token; ++j) m = std::max(m, logits[j]);
      double z = 0;
      for (int64_t j = 0; j <= q_token; ++j) z += std::exp(double(logits[j] - m));
      for (int64_t i = 0; i < r.n() && r.begin + i <= q_token; ++i)
        vote[i] += float(std::exp(double(logits[r.begin + i] - m)) / z);
    }
  }
  pooled->assign(size_t(r.n()), 0.0f);
  for (int64_t i = 0; i < r.n(); ++i) {
    float best = 0;
    for (int64_t j = std::max<int64_t>(0, i - kPool / 2); j <= std::min(r.n() - 1, i + kPool / 2); ++j)
      best = std::max(best, vote[j]);
    (*pooled)[i] = best;
  }
}

class StreamingLlm : public CacheMethod {
 public:
  explicit StreamingLlm(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "streamingllm"; }
  std::string reference() const override { return "StreamingLLM, Xiao et al., ICLR 2024 (arXiv:2309.17453)"; }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int64_t keep = kept_per_head(cfg, r.n(), target_ratio, false);
    MethodResult res = make_result(model, *st, r, double(keep) * raw_bytes_per_token(cfg),
                                   "sinks " + std::to_string(r.begin) + " + window " +
                                       std::to_string(st->n_tokens() - r.end + keep));
    std::vector<int64_t> kept;
    for (int64_t i = 0; i < st->n_tokens(); ++i)
      if (i < r.begin || i >= r.end - keep) kept.push_back(i);
    KVTC_RETURN_IF_ERROR(st->retain(kept));
    return res;
  }

 private:
  MethodConfig c_;
};

// Keeps, per layer and KV head, the `keep` compressed-range tokens with the highest score; masks the rest.
void keep_top(KvState* st, int layer, int head, const CompressedRange& r, const std::vector<float>& score, int64_t keep) {
  std::vector<int64_t> idx(size_t(r.n()));
  std::iota(idx.begin(), idx.end(), 0);
  std::nth_element(idx.begin(), idx.begin() + keep, idx.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b] || (score[a] == score[b] && a > b); });
  for (int64_t i = keep; i < r.n(); ++i) st->mask_token(layer, head, r.begin + idx[i]);
}

class H2o : public CacheMethod {
 public:
  explicit H2o(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "h2o"; }
  std::string reference() const override { return "H2O, Zhang et al., NeurIPS 2023 (arXiv:2306.14048)"; }
  MethodNeeds needs() const override { return {true, 0}; }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int64_t keep = kept_per_head(cfg, r.n(), target_ratio, true);
    std::vector<float> score;
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int h = 0; h < cfg.n_kv_heads; ++h) {
        KVTC_RETURN_IF_ERROR(eviction_scores(EvictionScore::kH2o, cfg, *st, r, l, h, &score));
        keep_top(st, l, h, r, score, keep);
      }
    const double heads = double(cfg.n_layers) * cfg.n_kv_heads;
    return make_result(model, *st, r, double(keep) * heads * (4.0 * cfg.head_dim + kIndexBytes),
                       "keep " + std::to_string(keep) + " per head");
  }

 private:
  MethodConfig c_;
};

class SnapKv : public CacheMethod {
 public:
  explicit SnapKv(const MethodConfig& c) : c_(c) {}
  std::string name() const override { return "snapkv"; }
  std::string reference() const override { return "SnapKV, Li et al., 2024 (arXiv:2404.14469)"; }
  MethodNeeds needs() const override { return {false, kSnapKvObservation}; }
  Result<MethodResult> apply(const Model& model, KvState* st, double target_ratio) const override {
    const ModelConfig& cfg = model.config();
    const CompressedRange r = compressed_range(*st, c_);
    const int64_t keep = kept_per_head(cfg, r.n(), target_ratio, true);
    std::vector<float> pooled;
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int g = 0; g < cfg.n_kv_heads; ++g) {
        KVTC_RETURN_IF_ERROR(eviction_scores(EvictionScore::kSnapKv, cfg, *st, r, l, g, &pooled));
        keep_top(st, l, g, r, pooled, keep);
      }
    const double heads = double(cfg.n_layers) * cfg.n_kv_heads;
    return make_result(model, *st, r, double(keep) * heads * (4.0 * cfg.head_dim + kIndexBytes),
                       "keep " + std::to_string(keep) + " per head");
  }

 private:
  MethodConfig c_;
};

}  // namespace

Status eviction_scores(EvictionScore kind, const ModelConfig& cfg, const KvState& st, const CompressedRange& r,
                       int layer, int head, std::vector<float>* score) {
  if (kind == EvictionScore::kH2o) {
    if (st.attention_mass(layer).empty()) return invalid_argument("h2o: the prefill did not accumulate attention");
    const float* mass = st.attention_mass(layer).data() + size_t(head) * st.capacity();
    score->assign(mass + r.begin, mass + r.end);
    return Status::ok();
  }
  if (st.n_captured_queries() == 0) return invalid_argument("snapkv: the prefill captured no queries");
  snapkv_scores(cfg, st, r, layer, head, score);
  return Status::ok();
}

std::unique_ptr<CacheMethod> make_streamingllm(const MethodConfig& c) { return std::make_unique<StreamingLlm>(c); }
std::unique_ptr<CacheMethod> make_h2o(const MethodConfig& c) { return std::make_unique<H2o>(c); }
std::unique_ptr<CacheMethod> make_snapkv(const MethodConfig& c) { return std::make_unique<SnapKv>(c); }

}  // namespace kvtc::engine
