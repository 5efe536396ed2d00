// Encode kernels: gather + unrope + centre, quantise, pack, copy. Simple mappings on purpose: the
// projection GEMM and DEFLATE dominate the encode; these kernels are memory-bound passes.
#include "cuda/encode_kernels.cuh"

#include <cuda_bf16.h>

namespace kvtc::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kQuantThreads = 128;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

int blocks_for(int64_t items, int threads) {
  const int64_t b = (items + threads - 1) / threads;
  return int(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// The tail both gather kernels share, once the pair (a, b) of features ia, ib is read: the inverse RoPE
// rotation with rope[k] when rope is set (RopeTable::apply(inverse): s' = -s; a' = a c - b s';
// b' = a s' + b c), then the mean subtracted. mean and row point at the layer-head's first feature.
// Returns the pair's two centred values (features ia, ib).
__device__ inline float2 unrope_centre_pair(float a, float b, const float2* rope, int64_t k, const float* mean, int ia,
                                            int ib) {
  if (rope != nullptr) {
    const float2 cs = rope[k];
    const float sj = -cs.y;
    const float ra = f_sub(f_mul(a, cs.x), f_mul(b, sj));
    const float rb = f_add(f_mul(a, sj), f_mul(b, cs.x));
    a = ra;
    b = rb;
  }
  return make_float2(f_sub(a, mean[ia]), f_sub(b, mean[ib]));
}

// One thread per (token, layer-head, RoPE pair): both features of the pair, so that the rotation reads
// and writes each element once. Half style: consecutive threads touch consecutive features in both
// halves; interleaved: neighbouring pairs.
__global__ void gather_kernel(GatherParams p) {
  const int half = p.head_dim / 2;
  const int64_t per_token = int64_t(p.n_lh) * half;
  const int64_t total = p.n * per_token;
  const int64_t n_features = int64_t(p.n_lh) * p.head_dim;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < total;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = item / per_token;
    const int64_t rem = item - t * per_token;
    const int64_t lh = rem / half;
    const int i = int(rem - lh * half);
    const int ia = p.rope_style == 0 ? i : 2 * i;
    const int ib = p.rope_style == 0 ? i + half : 2 * i + 1;
    const float* src = p.cache + (lh * p.cache_tokens + p.token0 + t) * p.head_dim;
    const int64_t col = lh * p.head_dim;
    const float2 r = unrope_centre_pair(src[ia], src[ib], p.rope, t * half + i, p.mean + col, ia, ib);
    float* row = p.x + t * n_features + col;
    row[ia] = r.x;
    row[ib] = r.y;
  }
}

// One thread per (token, group); threads of a warp share the group (blockIdx.y) and read consecutive
// tokens of each component row, so every load and store is coalesced.
__global__ void quantize_kernel(const float* coef, int64_t m, const QuantGroup* groups, int n_groups, uint16_t* sym,
                                uint16_t* side) {
  for (int g = blockIdx.y; g < n_groups; g += gridDim.y) {
    const QuantGroup G = groups[g];
    for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < m; t += int64_t(gridDim.x) * blockDim.x) {
      const float* x = coef + int64_t(G.first_component) * m + t;
      uint16_t* out = sym + int64_t(G.first_component) * m + t;
      if (G.kind == uint32_t(kQuantKindF16)) {
        for (uint32_t j = 0; j < G.n_components; ++j) out[int64_t(j) * m] = f16_symbol(x[int64_t(j) * m]);
        continue;
      }
      const QuantParams q = quantize_group(x, m, int(G.n_components), int(G.kind), int(G.width_bits), out, m);
      side[int64_t(G.side_row) * m + t] = q.scale_f16;
      if (G.kind == uint32_t(kQuantKindAffine)) side[int64_t(G.side_row + 1) * m + t] = q.shift_f16;
    }
  }
}

__global__ void pack_kernel(const PackJob* jobs, int n_jobs, const CodesSpan* spans) {
  for (int b = blockIdx.x; b < n_jobs; b += gridDim.x) {
    const PackJob j = jobs[b];
    for (uint64_t i = threadIdx.x; i < j.raw_bytes; i += blockDim.x) j.dst[i] = pack_job_byte(j, spans, i);
  }
}

// Element (l, h, t, d) of a CacheSource: its bits (zero-extended) and its value.
__device__ inline uint32_t source_bits(const CacheSource& s, int l, int64_t h, int64_t t, int64_t d) {
  int64_t index;
  if (s.block_table != nullptr) {
    const int64_t block = s.block_table[t / s.block_size], slot = t % s.block_size;
    index = (((block * 2 + s.stream) * s.block_size + slot) * s.n_heads + h) * s.head_dim + d;
  } else {
    index = (h * s.n_tokens + t) * s.head_dim + d;
  }
  const void* base = s.layers[l];
  if (s.dtype == 2) return static_cast<const uint32_t*>(base)[index];
  return static_cast<const uint16_t*>(base)[index];
}
__device__ inline float bits_value(uint32_t bits, uint32_t dtype) {
  if (dtype == 2) return bits_f32(bits);
  if (dtype == 1) return f16_bits_to_f32(uint16_t(bits));
  return bits_f32(bits << 16);
}

// gather_kernel's mapping and arithmetic, reading a CacheSource.
__global__ void gather_view_kernel(GatherViewParams p) {
  const int D = p.src.head_dim, H = p.src.n_heads;
  const int half = D / 2;
  const int64_t n_lh = int64_t(p.n_layers) * H;
  const int64_t per_token = n_lh * half;
  const int64_t total = p.n * per_token;
  const int64_t n_features = n_lh * D;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < total;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = item / per_token;
    const int64_t rem = item - t * per_token;
    const int64_t lh = rem / half;
    const int i = int(rem - lh * half);
    const int ia = p.rope_style == 0 ? i : 2 * i;
    const int ib = p.rope_style == 0 ? i + half : 2 * i + 1;
    const int l = int(lh / H);
    const int64_t h = lh - int64_t(l) * H, token = p.token0 + t;
    const float a = bits_value(source_bits(p.src, l, h, token, ia), p.src.dtype);
    const float b = bits_value(source_bits(p.src, l, h, token, ib), p.src.dtype);
    const int64_t col = lh * D;
    const float2 r = unrope_centre_pair(a, b, p.rope, t * half + i, p.mean + col, ia, ib);
    if (p.x_bf16 != nullptr) {  // the bf16 projection's operand: rounded to nearest even
      __nv_bfloat16* row = reinterpret_cast<__nv_bfloat16*>(p.x_bf16) + t * n_features + col;
      row[ia] = __float2bfloat16_rn(r.x);
      row[ib] = __float2bfloat16_rn(r.y);
    } else {
      float* row = p.x + t * n_features + col;
      row[ia] = r.x;
      row[ib] = r.y;
    }
  }
}

// One block per job, one thread per output byte: plane-major byte planes of [H][n][D] elements.
__global__ void pack_exact_kernel(const ExactPackJob* jobs, int n_jobs) {
  for (int b = blockIdx.x; b < n_jobs; b += gridDim.x) {
    const ExactPackJob j = jobs[b];
    const uint64_t n = j.n_tokens, d = uint64_t(j.src.head_dim);
    const uint64_t count = uint64_t(j.src.n_heads) * n * d;
    for (uint64_t i = threadIdx.x; i < j.raw_bytes; i += blockDim.x) {
      const uint64_t plane = i / count, e = i - plane * count;
      const uint64_t h = e / (n * d), rem = e - h * n * d;
      const uint32_t bits = source_bits(j.src, int(j.layer), int64_t(h), int64_t(j.token0 + rem / d), int64_t(rem % d));
      j.dst[i] = uint8_t((bits >> (8 * plane)) & 0xffu);
    }
  }
}

__global__ void copy_kernel(const CopyJob* jobs, int n_jobs) {
  for (int b = blockIdx.x; b < n_jobs; b += gridDim.x) {
    const CopyJob j = jobs[b];
    for (uint32_t i = threadIdx.x; i < j.n_bytes; i += blockDim.x) j.dst[i] = j.src[i];
  }
}

}  // namespace

cudaError_t launch_gather(const GatherParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.n_lh <= 0 || p.head_dim < 2) return cudaSuccess;
  const int64_t total = p.n * int64_t(p.n_lh) * (p.head_dim / 2);
  gather_kernel<<<blocks_for(total, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_quantize(const float* coef, int64_t m, const QuantGroup* groups, int n_groups, uint16_t* sym,
                            uint16_t* side, cudaStream_t stream) {
  if (m <= 0 || n_groups <= 0) return cudaSuccess;
  const dim3 grid(unsigned(blocks_for(m, kQuantThreads)), unsigned(n_groups < 65535 ? n_groups : 65535));
  quantize_kernel<<<grid, kQuantThreads, 0, stream>>>(coef, m, groups, n_groups, sym, side);
  return cudaGetLastError();
}

cudaError_t launch_pack(const PackJob* jobs, int n_jobs, const CodesSpan* spans, cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  pack_kernel<<<unsigned(n_jobs < (1 << 20) ? n_jobs : (1 << 20)), kThreads, 0, stream>>>(jobs, n_jobs, spans);
  return cudaGetLastError();
}

cudaError_t launch_gather_view(const GatherViewParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.n_layers <= 0 || p.src.n_heads <= 0 || p.src.head_dim < 2) return cudaSuccess;
  const int64_t total = p.n * int64_t(p.n_layers) * p.src.n_heads * (p.src.head_dim / 2);
  gather_view_kernel<<<blocks_for(total, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_pack_exact(const ExactPackJob* jobs, int n_jobs, cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  pack_exact_kernel<<<unsigned(n_jobs < (1 << 20) ? n_jobs : (1 << 20)), kThreads, 0, stream>>>(jobs, n_jobs);
  return cudaGetLastError();
}

cudaError_t launch_copy(const CopyJob* jobs, int n_jobs, cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  copy_kernel<<<unsigned(n_jobs < (1 << 20) ? n_jobs : (1 << 20)), kThreads, 0, stream>>>(jobs, n_jobs);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
