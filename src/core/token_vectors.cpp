#include "core/token_vectors.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace kvtc {

void gather_token_vectors(const KVCache& cache, Stream stream, int64_t token0, int64_t n,
                          const RopeTable* unrope, float* out) {
  const ModelShape& s = cache.shape;
  const int64_t p = s.n_features();
  const int d = s.head_dim;
  for (int l = 0; l < s.n_layers; ++l) {
    for (int h = 0; h < s.n_kv_heads; ++h) {
      const int64_t col = (int64_t(l) * s.n_kv_heads + h) * d;
      for (int64_t t = 0; t < n; ++t) {
        const float* src = stream == Stream::kKey ? cache.k_row(l, h, token0 + t) : cache.v_row(l, h, token0 + t);
        std::memcpy(out + t * p + col, src, sizeof(float) * d);
      }
    }
  }
  if (stream == Stream::kKey && unrope != nullptr) {
    // Rows of one token share a position: rotate each head slice of each row.
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t c = 0; c < p; c += d) unrope->apply(out + t * p + c, token0 + t, 1, /*inverse=*/true);
    }
  }
}

void scatter_layer_vectors(const float* in, int64_t n, int layer, Stream stream, int64_t token0,
                           const RopeTable* rope, KVCache& cache) {
  const ModelShape& s = cache.shape;
  const int64_t p = s.n_features();
  const int d = s.head_dim;
  for (int h = 0; h < s.n_kv_heads; ++h) {
    const int64_t col = (int64_t(layer) * s.n_kv_heads + h) * d;
    for (int64_t t = 0; t < n; ++t) {
      float* dst = stream == Stream::kKey ? cache.k_row(layer, h, token0 + t) : cache.v_row(layer, h, token0 + t);
      std::memcpy(dst, in + t * p + col, sizeof(float) * d);
      if (stream == Stream::kKey && rope != nullptr) rope->apply(dst, token0 + t, 1, /*inverse=*/false);
    }
  }
}

}  // namespace kvtc
