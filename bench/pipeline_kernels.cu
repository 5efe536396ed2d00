#include "pipeline_kernels.cuh"

#include <cuda_bf16.h>

namespace kvtc::bench {

namespace {

__device__ __forceinline__ float bf(uint16_t x) { return __uint_as_float(uint32_t(x) << 16); }
__device__ __forceinline__ uint16_t to_bf(float x) {
  const __nv_bfloat16 b = __float2bfloat16_rn(x);
  return *reinterpret_cast<const uint16_t*>(&b);
}

__global__ void fill_kernel(uint16_t* dst, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + uint64_t(i) * 0x9e3779b97f4a7c15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    dst[i] = to_bf((float(z >> 40) / float(1 << 24) * 2.0f - 1.0f) * scale);
  }
}

__device__ __forceinline__ int64_t kv_offset(const KvLayout& l, int h, int64_t t) {
  constexpr int D = 128;
  if (l.block_table == nullptr) return h * l.head_stride + t * D;
  const int64_t blk = l.block_table[t / l.block_size];
  return ((blk * 2 + l.kv) * l.block_size + t % l.block_size) * int64_t(l.n_heads) * D + int64_t(h) * D;
}

constexpr int kWarps = 4;
constexpr int kD = 128;

// Split-key attention (flash-decoding): one block of 4 warps per (query head, token, key split).
// Lane j holds dims 4j..4j+3; warp w takes keys w, w + 4, ... of the split with an online softmax;
// the warps merge in shared memory and the block writes its partial (max, sum, weighted values).
__global__ void attention_partial_kernel(const uint16_t* qkv, int64_t qkv_stride, int n_q_heads, int group, KvLayout k,
                                         KvLayout v, int64_t n_keys, int64_t keys_per_split, float* part) {
  const int h = blockIdx.x, r = blockIdx.y, split = blockIdx.z, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int kvh = h / group;
  const uint16_t* q = qkv + r * qkv_stride + int64_t(h) * kD;
  float qv[4];
  for (int i = 0; i < 4; ++i) qv[i] = bf(q[4 * lane + i]) * 0.08838834764831845f;  // 1/sqrt(128)
  float m = -INFINITY, l = 0.0f, acc[4] = {0, 0, 0, 0};
  const int64_t t_end = min(n_keys, (split + 1) * keys_per_split);
  for (int64_t t = split * keys_per_split + w; t < t_end; t += kWarps) {
    const uint2 kw = *reinterpret_cast<const uint2*>(k.base + kv_offset(k, kvh, t) + 4 * lane);
    const uint2 vw = *reinterpret_cast<const uint2*>(v.base + kv_offset(v, kvh, t) + 4 * lane);
    float s = qv[0] * __uint_as_float(kw.x << 16) + qv[1] * __uint_as_float(kw.x & 0xffff0000u) +
              qv[2] * __uint_as_float(kw.y << 16) + qv[3] * __uint_as_float(kw.y & 0xffff0000u);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    const float m_new = fmaxf(m, s);
    const float c = __expf(m - m_new), p = __expf(s - m_new);
    acc[0] = acc[0] * c + p * __uint_as_float(vw.x << 16);
    acc[1] = acc[1] * c + p * __uint_as_float(vw.x & 0xffff0000u);
    acc[2] = acc[2] * c + p * __uint_as_float(vw.y << 16);
    acc[3] = acc[3] * c + p * __uint_as_float(vw.y & 0xffff0000u);
    l = l * c + p;
    m = m_new;
  }
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][kD];
  if (lane == 0) {
    sm[w] = m;
    sl[w] = l;
  }
  for (int i = 0; i < 4; ++i) sacc[w][4 * lane + i] = acc[i];
  __syncthreads();
  float mm = -INFINITY;
  for (int j = 0; j < kWarps; ++j) mm = fmaxf(mm, sm[j]);
  float num = 0, den = 0;
  for (int j = 0; j < kWarps; ++j) {
    if (sl[j] == 0.0f) continue;
    const float c = __expf(sm[j] - mm);
    num += sacc[j][threadIdx.x] * c;
    den += sl[j] * c;
  }
  // part: [token][head][split] blocks of kD + 2 floats: weighted values, then max and sum.
  float* out = part + ((int64_t(r) * n_q_heads + h) * gridDim.z + split) * (kD + 2);
  out[threadIdx.x] = num;
  if (threadIdx.x == 0) {
    out[kD] = mm;
    out[kD + 1] = den;
  }
}

// Merges the splits of one (query head, token).
__global__ void attention_merge_kernel(const float* part, int n_q_heads, int splits, uint16_t* o) {
  const int h = blockIdx.x, r = blockIdx.y;
  const float* in = part + (int64_t(r) * n_q_heads + h) * splits * (kD + 2);
  float mm = -INFINITY;
  for (int j = 0; j < splits; ++j)
    if (in[j * (kD + 2) + kD + 1] > 0.0f) mm = fmaxf(mm, in[j * (kD + 2) + kD]);
  float num = 0, den = 0;
  for (int j = 0; j < splits; ++j) {
    const float* b = in + j * (kD + 2);
    if (b[kD + 1] == 0.0f) continue;
    const float c = __expf(b[kD] - mm);
    num += b[threadIdx.x] * c;
    den += b[kD + 1] * c;
  }
  o[(int64_t(r) * n_q_heads + h) * kD + threadIdx.x] = to_bf(den > 0 ? num / den : 0.0f);
}

__global__ void silu_mul_kernel(const uint16_t* gu, int n_rows, int64_t inter, uint16_t* act) {
  const int64_t n = int64_t(n_rows) * inter;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / inter, i = e % inter;
    const float g = bf(gu[r * 2 * inter + i]), u = bf(gu[r * 2 * inter + inter + i]);
    act[e] = to_bf(g / (1.0f + __expf(-g)) * u);
  }
}

}  // namespace

cudaError_t launch_fill_bf16(uint16_t* dst, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
  fill_kernel<<<1024, 256, 0, stream>>>(dst, n, seed, scale);
  return cudaGetLastError();
}

cudaError_t launch_attention(const uint16_t* qkv, int64_t qkv_stride, int n_new, int n_q_heads, KvLayout k, KvLayout v,
                             int64_t n_keys, float* scratch, uint16_t* o, cudaStream_t stream) {
  if (k.n_heads <= 0 || n_q_heads % k.n_heads != 0 || n_keys <= 0) return cudaErrorInvalidValue;
  const int64_t per = (n_keys + kAttentionSplits - 1) / kAttentionSplits;
  attention_partial_kernel<<<dim3(unsigned(n_q_heads), unsigned(n_new), unsigned(kAttentionSplits)), 32 * kWarps, 0,
                             stream>>>(qkv, qkv_stride, n_q_heads, n_q_heads / k.n_heads, k, v, n_keys, per, scratch);
  attention_merge_kernel<<<dim3(unsigned(n_q_heads), unsigned(n_new)), kD, 0, stream>>>(scratch, n_q_heads,
                                                                                       kAttentionSplits, o);
  return cudaGetLastError();
}

cudaError_t launch_silu_mul(const uint16_t* gu, int n_rows, int64_t inter, uint16_t* act, cudaStream_t stream) {
  silu_mul_kernel<<<512, 256, 0, stream>>>(gu, n_rows, inter, act);
  return cudaGetLastError();
}

}  // namespace kvtc::bench
