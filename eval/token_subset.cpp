#include "eval/token_subset.hpp"

#include <algorithm>
#include <numeric>

#include "engine/kernels.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace {

// Rotates every key row of `k` ([kv_heads][n][head_dim]) from position from[t] to position to[t]
// (rotations compose exactly, up to fp32 rounding).
void move_rope(const ModelConfig& cfg, const std::vector<float>& inv_freq, const std::vector<int64_t>& from,
               const std::vector<int64_t>& to, std::vector<float>* k) {
  const int64_t n = int64_t(from.size());
  const int half = cfg.head_dim / 2;
  std::vector<float> c_from(size_t(n * half)), s_from(size_t(n * half)), c_to(size_t(n * half)), s_to(size_t(n * half));
  rope_angles(from.data(), n, inv_freq.data(), half, c_from.data(), s_from.data());
  rope_angles(to.data(), n, inv_freq.data(), half, c_to.data(), s_to.data());
  for (auto& s : s_from) s = -s;  // the inverse rotation
  const bool interleaved = cfg.rope.style == RopeStyle::kInterleaved;
  for (int h = 0; h < cfg.n_kv_heads; ++h)
    for (int64_t t = 0; t < n; ++t) {
      float* row = k->data() + (int64_t(h) * n + t) * cfg.head_dim;
      rope_rotate(row, &c_from[size_t(t * half)], &s_from[size_t(t * half)], half, interleaved);
      rope_rotate(row, &c_to[size_t(t * half)], &s_to[size_t(t * half)], half, interleaved);
    }
}

}  // namespace

Status token_scores(EvictionScore kind, const ModelConfig& cfg, const KvState& st, const CompressedRange& r,
                    std::vector<double>* score) {
  score->assign(size_t(r.n()), 0.0);
  std::vector<float> head_score;
  for (int l = 0; l < cfg.n_layers; ++l)
    for (int h = 0; h < cfg.n_kv_heads; ++h) {
      KVTC_RETURN_IF_ERROR(eviction_scores(kind, cfg, st, r, l, h, &head_score));
      add_head_share(head_score, score);
    }
  return Status::ok();
}

std::vector<int64_t> top_tokens(const std::vector<double>& score, int64_t count) {
  std::vector<int64_t> best(score.size());
  std::iota(best.begin(), best.end(), 0);
  count = std::clamp<int64_t>(count, 0, int64_t(best.size()));
  std::nth_element(best.begin(), best.begin() + count, best.end(), [&](int64_t a, int64_t b) {
    return score[size_t(a)] > score[size_t(b)] || (score[size_t(a)] == score[size_t(b)] && a > b);
  });
  best.resize(size_t(count));
  std::sort(best.begin(), best.end());
  return best;
}

Result<MethodResult> code_tokens_apart(const Model& model, KvState* st, const CompressedRange& r,
                                       const std::vector<int64_t>& tokens, const CacheMethod& method,
                                       double target_ratio) {
  const ModelConfig& cfg = model.config();
  const int64_t n = st->n_tokens();
  std::vector<int64_t> packed_tokens;  // indices into the state: sinks, the tokens, window
  for (int64_t i = 0; i < r.begin; ++i) packed_tokens.push_back(i);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < r.begin || tokens[i] >= r.end || (i > 0 && tokens[i] <= tokens[i - 1]))
      return invalid_argument("code_tokens_apart: tokens must be ascending compressed-token indices");
    packed_tokens.push_back(tokens[i]);
  }
  for (int64_t i = r.end; i < n; ++i) packed_tokens.push_back(i);
  const int64_t m = int64_t(packed_tokens.size());

  // The packed tokens at consecutive positions 0..m-1, in a state of their own.
  std::vector<int64_t> true_pos(static_cast<size_t>(m)), seq_pos(static_cast<size_t>(m));
  for (int64_t t = 0; t < m; ++t) {
    true_pos[size_t(t)] = st->positions()[size_t(packed_tokens[size_t(t)])];
    seq_pos[size_t(t)] = t;
  }
  const std::vector<float> inv_freq = cfg.rope_inv_freq();
  const int hd = cfg.head_dim;
  std::vector<std::vector<float>> k(size_t(cfg.n_layers)), v(size_t(cfg.n_layers));
  for (int l = 0; l < cfg.n_layers; ++l) {
    k[size_t(l)].resize(size_t(cfg.n_kv_heads) * m * hd);
    v[size_t(l)].resize(k[size_t(l)].size());
    for (int h = 0; h < cfg.n_kv_heads; ++h)
      for (int64_t t = 0; t < m; ++t) {
        const size_t dst = size_t((int64_t(h) * m + t) * hd), src = size_t(packed_tokens[size_t(t)] * hd);
        std::copy_n(st->k(l, h) + src, hd, k[size_t(l)].begin() + dst);
        std::copy_n(st->v(l, h) + src, hd, v[size_t(l)].begin() + dst);
      }
    move_rope(cfg, inv_freq, true_pos, seq_pos, &k[size_t(l)]);
  }
  KvState packed = model.new_state();
  KVTC_RETURN_IF_ERROR(packed.assign(m, seq_pos, k, v));
  KVTC_ASSIGN_OR_RETURN(MethodResult coded, method.apply(model, &packed, target_ratio));
  if (packed.n_tokens() != m) return internal_error("code_tokens_apart: the method changed the token count");

  // Everything the method gave back, at the true positions, into the state's rows.
  for (int l = 0; l < cfg.n_layers; ++l) {
    for (int h = 0; h < cfg.n_kv_heads; ++h)
      for (int64_t t = 0; t < m; ++t) {
        const size_t dst = size_t((int64_t(h) * m + t) * hd);
        std::copy_n(packed.k(l, h) + t * hd, hd, k[size_t(l)].begin() + dst);
        std::copy_n(packed.v(l, h) + t * hd, hd, v[size_t(l)].begin() + dst);
      }
    move_rope(cfg, inv_freq, seq_pos, true_pos, &k[size_t(l)]);
    for (int h = 0; h < cfg.n_kv_heads; ++h)
      for (int64_t t = 0; t < m; ++t) {
        const size_t src = size_t((int64_t(h) * m + t) * hd), dst = size_t(packed_tokens[size_t(t)] * hd);
        std::copy_n(k[size_t(l)].begin() + src, hd, st->k(l, h) + dst);
        std::copy_n(v[size_t(l)].begin() + src, hd, st->v(l, h) + dst);
      }
  }
  return coded;
}

}  // namespace kvtc::engine
