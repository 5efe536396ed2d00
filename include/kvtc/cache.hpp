// kvtc/cache.hpp: a KV cache in memory, and its file layout (safetensors).
//
// File layout (docs/CACHE_LAYOUT.md has the full text):
//   k.<layer>, v.<layer>  [n_kv_heads, n_tokens, head_dim]  bf16, f16 or f32; keys with RoPE applied
//   q.<layer>  (optional) [n_heads, n_query, head_dim]      the last n_query queries, RoPE applied
//   __metadata__ (strings): num_layers, num_kv_heads, head_dim, rope_theta, rope_style ("half" or
//   "interleaved"), position_offset, model; optional num_heads, rope_scaling.
// In memory every tensor is fp32; `dtype` remembers the file's element type so that writing the cache
// back gives the same bytes (bf16 and f16 convert to fp32 and back exactly).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc {

enum class DType : uint8_t { kBF16 = 0, kF16 = 1, kF32 = 2 };
const char* dtype_name(DType dtype);  // "BF16", "F16", "F32" (safetensors spelling)
int dtype_size_bytes(DType dtype);

// How RoPE pairs the features of one head.
//   kHalf:        (i, i + head_dim/2), as Hugging Face Llama
//   kInterleaved: (2i, 2i + 1), as GGUF / Meta reference code
enum class RopeStyle : uint8_t { kHalf = 0, kInterleaved = 1 };

// Rotary position embedding parameters. Frequency of pair i: theta^(-2i/head_dim), then adjusted by
// Llama 3 scaling when llama3_factor > 0 (the same rule as Hugging Face's "llama3" rope_type).
struct RopeParams {
  double theta = 10000.0;
  RopeStyle style = RopeStyle::kHalf;
  double llama3_factor = 0.0;  // 0: no scaling
  double llama3_low_freq_factor = 1.0;
  double llama3_high_freq_factor = 4.0;
  double llama3_original_max_position = 8192.0;

  // The head_dim/2 angular frequencies (radians per position), in double precision.
  std::vector<double> inv_freq(int head_dim) const;
};

// The facts about a model that a cache and a calibration must agree on.
struct ModelShape {
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  RopeParams rope;

  // Features per token and per stream (keys or values): p = n_layers * n_kv_heads * head_dim.
  int64_t n_features() const { return int64_t(n_layers) * n_kv_heads * head_dim; }
  bool operator==(const ModelShape& o) const;
  std::string to_string() const;  // "8 layers x 2 kv heads x 128, rope half theta 100000"
};

struct KVCache {
  ModelShape shape;
  DType dtype = DType::kBF16;      // element type in the file
  int64_t n_tokens = 0;
  int64_t position_offset = 0;     // RoPE position of token 0
  int32_t n_heads = 0;             // query heads (0 when unknown)
  int64_t n_query = 0;             // query vectors per layer in q (0: no q tensors)
  std::string model_name;
  std::map<std::string, std::string> metadata;  // the whole __metadata__, kept on round trip

  // Per layer, row-major [n_kv_heads][n_tokens][head_dim].
  std::vector<std::vector<float>> k, v;
  // Per layer, row-major [n_heads][n_query][head_dim]; empty when n_query == 0.
  std::vector<std::vector<float>> q;

  float* k_row(int layer, int head, int64_t token) {
    return k[layer].data() + (int64_t(head) * n_tokens + token) * shape.head_dim;
  }
  const float* k_row(int layer, int head, int64_t token) const {
    return k[layer].data() + (int64_t(head) * n_tokens + token) * shape.head_dim;
  }
  float* v_row(int layer, int head, int64_t token) {
    return v[layer].data() + (int64_t(head) * n_tokens + token) * shape.head_dim;
  }
  const float* v_row(int layer, int head, int64_t token) const {
    return v[layer].data() + (int64_t(head) * n_tokens + token) * shape.head_dim;
  }

  // Checks that every tensor has the size the shape and counts imply.
  Status validate() const;
  // Sets metadata from the typed fields (num_layers, rope_theta, ...) so that writing stays consistent.
  void sync_metadata();
};

// A borrowed tensor of one layer in caller memory. Element (head, token, dim) lies at
//   data + (head * head_stride + token * token_stride + dim) * element size,
// strides in elements, the head_dim elements of a row contiguous. Contiguous [n_kv_heads][n_tokens]
// [head_dim] has head_stride = n_tokens * head_dim and token_stride = head_dim.
struct TensorView {
  const void* data = nullptr;
  int64_t head_stride = 0, token_stride = 0;
};
struct MutableTensorView {
  void* data = nullptr;
  int64_t head_stride = 0, token_stride = 0;
};

// A cache in caller memory (a framework's tensors, pinned buffers), borrowed for one call: kvtc reads
// the elements where they lie and copies nothing up front. Keys carry RoPE, as in a KVCache.
struct CacheView {
  ModelShape shape;
  DType element_dtype = DType::kF32;  // type of the elements in memory
  DType dtype = DType::kBF16;         // element type the container records (its exact tokens use it)
  int64_t n_tokens = 0;
  int64_t position_offset = 0;        // RoPE position of token 0 (a block's first position in block mode)
  std::string model_name;
  std::map<std::string, std::string> metadata;
  std::vector<TensorView> k, v;       // one per layer

  // Checks counts, strides and pointers (non-null where there are elements; rows that do not overlap).
  Status validate() const;
  // A view over a KVCache's own fp32 tensors (element_dtype kF32, dtype the cache's file dtype).
  static CacheView of(const KVCache& cache);
};

// An owned fp32 copy of a view (metadata synced from the typed fields), e.g. to calibrate on it.
Result<KVCache> copy_cache(const CacheView& view);

// Reads a cache file. Errors name the tensor or metadata key at fault.
Result<KVCache> read_cache(const std::string& path);
// Parses a cache from the bytes of a safetensors file.
Result<KVCache> parse_cache(const uint8_t* data, size_t size_bytes);
// Writes a cache file in cache.dtype: to a temporary file first, then renamed, so a failure leaves no
// half-written file behind.
Status write_cache(const KVCache& cache, const std::string& path);
// Serialises a cache to safetensors bytes.
Result<std::vector<uint8_t>> serialize_cache(const KVCache& cache);

}  // namespace kvtc
