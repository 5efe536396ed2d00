#include "core/token_vectors.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "util/half.hpp"

namespace kvtc {

void read_row_f32(const TensorView& t, DType element_dtype, int head, int64_t token, int head_dim, float* out) {
  const int64_t at = int64_t(head) * t.head_stride + token * t.token_stride;
  switch (element_dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(t.data) + at, sizeof(float) * size_t(head_dim));
      return;
    case DType::kBF16: {
      const uint16_t* src = static_cast<const uint16_t*>(t.data) + at;
      for (int i = 0; i < head_dim; ++i) out[i] = bf16_to_f32(src[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* src = static_cast<const uint16_t*>(t.data) + at;
      for (int i = 0; i < head_dim; ++i) out[i] = f16_to_f32(src[i]);
      return;
    }
  }
}

void write_row_f32(const float* in, int head_dim, DType element_dtype, const MutableTensorView& t, int head,
                   int64_t token) {
  const int64_t at = int64_t(head) * t.head_stride + token * t.token_stride;
  switch (element_dtype) {
    case DType::kF32:
      std::memcpy(static_cast<float*>(t.data) + at, in, sizeof(float) * size_t(head_dim));
      return;
    case DType::kBF16: {
      uint16_t* dst = static_cast<uint16_t*>(t.data) + at;
      for (int i = 0; i < head_dim; ++i) dst[i] = f32_to_bf16(in[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* dst = static_cast<uint16_t*>(t.data) + at;
      for (int i = 0; i < head_dim; ++i) dst[i] = f32_to_f16(in[i]);
      return;
    }
  }
}

void gather_token_vectors(const KVCache& cache, Stream stream, int64_t token0, int64_t n,
                          const RopeTable* unrope, float* out) {
  gather_token_vectors(CacheView::of(cache), stream, token0, n, unrope, out);
}

void gather_token_vectors(const CacheView& cache, Stream stream, int64_t token0, int64_t n,
                          const RopeTable* unrope, float* out) {
  const ModelShape& s = cache.shape;
  const int64_t p = s.n_features();
  const int d = s.head_dim;
  for (int l = 0; l < s.n_layers; ++l) {
    const TensorView& src = stream == Stream::kKey ? cache.k[size_t(l)] : cache.v[size_t(l)];
    for (int h = 0; h < s.n_kv_heads; ++h) {
      const int64_t col = (int64_t(l) * s.n_kv_heads + h) * d;
      for (int64_t t = 0; t < n; ++t) read_row_f32(src, cache.element_dtype, h, token0 + t, d, out + t * p + col);
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
