// Gathering a cache's per-token vectors across all layers and KV heads (and scattering them back).
// Feature index of (layer l, kv head h, dim d): (l * n_kv_heads + h) * head_dim + d.
#pragma once

#include <cstdint>

#include "core/rope.hpp"
#include "kvtc/cache.hpp"

namespace kvtc {

enum class Stream : uint8_t { kKey = 0, kValue = 1 };
inline const char* stream_name(Stream s) { return s == Stream::kKey ? "K" : "V"; }

// One row (head_dim elements) of a view as fp32, and back: element types convert exactly to fp32 and
// round to nearest even on the way down.
void read_row_f32(const TensorView& t, DType element_dtype, int head, int64_t token, int head_dim, float* out);
void write_row_f32(const float* in, int head_dim, DType element_dtype, const MutableTensorView& t, int head,
                   int64_t token);

// Writes tokens [token0, token0 + n) of one stream as out[n][p]. For keys, `unrope` (if not null)
// removes RoPE; it must cover positions position_offset + token0 ... of the cache.
void gather_token_vectors(const CacheView& cache, Stream stream, int64_t token0, int64_t n,
                          const RopeTable* unrope, float* out);
void gather_token_vectors(const KVCache& cache, Stream stream, int64_t token0, int64_t n,
                          const RopeTable* unrope, float* out);

// The inverse for one layer: rows in[n][p] (only this layer's features are read) go to the cache's
// tensors for tokens [token0, token0 + n); `rope` (if not null) re-applies RoPE to keys.
void scatter_layer_vectors(const float* in, int64_t n, int layer, Stream stream, int64_t token0,
                           const RopeTable* rope, KVCache& cache);

}  // namespace kvtc
