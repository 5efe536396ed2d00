// attention_importance (include/kvtc/kvtc.hpp): SnapKV's token scores from a cache's own queries, the
// importance that token-adaptive rate takes. The eval harness scores tokens the same way from its
// prefill (eval/eval_evict.cpp, snapkv_scores; eval/token_subset.cpp, token_scores).
#include <algorithm>
#include <cmath>
#include <string>

#include <cblas.h>

#include "kvtc/kvtc.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

Result<std::vector<float>> attention_importance(const KVCache& cache, int64_t token_begin, int64_t token_end) {
  KVTC_RETURN_IF_ERROR(cache.validate());
  if (cache.n_query == 0 || cache.q.empty())
    return invalid_argument("attention importance needs the prefill's last queries (q tensors), and this cache has none");
  const int64_t n = cache.n_tokens;
  if (token_begin < 0 || token_end > n || token_begin > token_end)
    return invalid_argument("attention importance: token range [" + std::to_string(token_begin) + ", " +
                            std::to_string(token_end) + ") is outside the cache's " + std::to_string(n) + " tokens");
  const int hd = cache.shape.head_dim, G = cache.shape.n_kv_heads, H = cache.n_heads;
  if (H <= 0 || H % G != 0) return invalid_argument("attention importance: query heads are not a multiple of KV heads");
  const int n_rep = H / G;
  const int64_t n_obs = std::min<int64_t>(cache.n_query, n), r = token_end - token_begin;
  constexpr int kPool = 7;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<double> total(static_cast<size_t>(r), 0.0);
  std::vector<float> vote(static_cast<size_t>(r)), pooled(static_cast<size_t>(r)), logits(static_cast<size_t>(n));
  for (int l = 0; l < cache.shape.n_layers; ++l)
    for (int g = 0; g < G; ++g) {
      std::fill(vote.begin(), vote.end(), 0.0f);
      const float* k = cache.k_row(l, g, 0);
      for (int64_t o = cache.n_query - n_obs; o < cache.n_query; ++o) {
        const int64_t q_token = n - cache.n_query + o;  // its keys: 0 .. q_token
        for (int rr = 0; rr < n_rep; ++rr) {
          const float* qv = cache.q[size_t(l)].data() + (int64_t(g * n_rep + rr) * cache.n_query + o) * hd;
          cblas_sgemv(CblasRowMajor, CblasNoTrans, int(q_token + 1), hd, scale, k, hd, qv, 1, 0.0f, logits.data(), 1);
          float m = -INFINITY;
          for (int64_t j = 0; j <= q_token; ++j) m = std::max(m, logits[size_t(j)]);
          double z = 0;
          for (int64_t j = 0; j <= q_token; ++j) z += std::exp(double(logits[size_t(j)] - m));
          for (int64_t i = 0; i < r && token_begin + i <= q_token; ++i)
            vote[size_t(i)] += float(std::exp(double(logits[size_t(token_begin + i)] - m)) / z);
        }
      }
      double sum = 0;
      for (int64_t i = 0; i < r; ++i) {
        float best = 0;
        for (int64_t j = std::max<int64_t>(0, i - kPool / 2); j <= std::min(r - 1, i + kPool / 2); ++j)
          best = std::max(best, vote[size_t(j)]);
        pooled[size_t(i)] = best;
        sum += best;
      }
      if (sum > 0)
        for (int64_t i = 0; i < r; ++i) total[size_t(i)] += pooled[size_t(i)] / sum;
    }
  std::vector<float> out(static_cast<size_t>(n), 0.0f);
  for (int64_t i = 0; i < r; ++i) out[size_t(token_begin + i)] = float(total[size_t(i)]);
  return out;
}

}  // namespace kvtc
