// Kernels of the layer-pipelined restore demo (bench/bench_cuda_pipeline.cpp): a stand-in for a
// model's layer computing new tokens on top of a restored cache. C++17 host declarations only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::bench {

// Where element (head, token) of one layer's K or V lies, as the restore writes it: contiguous
// [H][T][D] (block_table null) or vLLM's paged [num_blocks][2][block_size][H][D] (kv 0 keys, 1 values).
struct KvLayout {
  const uint16_t* base = nullptr;  // bf16
  int64_t head_stride = 0;
  const int32_t* block_table = nullptr;
  int block_size = 0;
  int kv = 0;
  int n_heads = 0;
};

// Uniform values in [-scale, scale) from a hash of (seed, index), as bf16.
cudaError_t launch_fill_bf16(uint16_t* dst, int64_t n, uint64_t seed, float scale, cudaStream_t stream);

// Attention of n_new query tokens over n_keys cached tokens, head_dim 128, grouped queries:
// q is row r of qkv (row stride qkv_stride elements), heads [0, n_q_heads) of 128; query head h reads
// KV head h / (n_q_heads / n_kv_heads). Softmax in fp32 with scale 1/sqrt(128); o [n_new][n_q_heads][128].
// Split over keys (flash-decoding: kAttentionSplits blocks per head and token, then a merge), so that
// a single new token fills the GPU; scratch holds attention_scratch_floats(n_new, n_q_heads) floats.
constexpr int kAttentionSplits = 32;
inline int64_t attention_scratch_floats(int n_new, int n_q_heads) {
  return int64_t(n_new) * n_q_heads * kAttentionSplits * (128 + 2);
}
cudaError_t launch_attention(const uint16_t* qkv, int64_t qkv_stride, int n_new, int n_q_heads, KvLayout k, KvLayout v,
                             int64_t n_keys, float* scratch, uint16_t* o, cudaStream_t stream);

// act[r][i] = silu(gu[r][i]) * gu[r][inter + i], bf16.
cudaError_t launch_silu_mul(const uint16_t* gu, int n_rows, int64_t inter, uint16_t* act, cudaStream_t stream);

}  // namespace kvtc::bench
