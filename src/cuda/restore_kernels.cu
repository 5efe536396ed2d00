#include "cuda/restore_kernels.cuh"

#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "format/quant_rules.hpp"

namespace kvtc::cuda {

namespace {

__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
  return __half2float(__ushort_as_half(uint16_t(bits)));
}

__global__ void dequantize_kernel(const DequantJob* __restrict__ jobs, bool to_bf16, uint32_t* status) {
  const DequantJob job = jobs[blockIdx.x];
  const CompInfo* __restrict__ comps = job.comps;
  const uint32_t n = job.n_tokens, nc = job.c1 - job.c0;
  const CompInfo base = comps[job.c0];
  uint32_t cls_bytes[5];
#pragma unroll
  for (int c = 0; c < 4; ++c) cls_bytes[c] = (n * (1u << c) + 7) / 8;
  cls_bytes[4] = 2 * n;
  const uint64_t total = uint64_t(n) * nc;
  const uint32_t ld = job.ld;
  bool bad = false;
  if (nc == 0) return;
  // Element e is (token i = e / nc, component c0 + e % nc); both advance incrementally (no 64-bit
  // division per element): consecutive threads take consecutive components of a token, so the
  // coefficient writes [row][component] coalesce.
  const uint32_t step_i = blockDim.x / nc, step_j = blockDim.x % nc;
  uint32_t i = threadIdx.x / nc, jr = threadIdx.x % nc;
  for (uint64_t e = threadIdx.x; e < total; e += blockDim.x, i += step_i, jr += step_j) {
    if (jr >= nc) {
      jr -= nc;
      ++i;
    }
    const uint32_t j = job.c0 + jr;
    const CompInfo ci = comps[j];
    float value = 0.0f;
    if (ci.cls != 5) {
      uint32_t sym;
      const int bits = ci.cls == 4 ? 16 : ci.width_bits;
      if (job.layout == 0) {
        uint64_t off = 0;
#pragma unroll
        for (int c = 0; c < 5; ++c) off += uint64_t(ci.prefix_count[c] - base.prefix_count[c]) * cls_bytes[c];
        if (ci.cls == 4) {
          sym = uint32_t(job.codes[off + i]) | (uint32_t(job.codes[off + n + i]) << 8);
        } else {
          const int cw = 1 << ci.cls;  // 1, 2, 4, 8 bits
          const uint32_t bit = i * uint32_t(cw);
          sym = (uint32_t(job.codes[off + (bit >> 3)]) >> (bit & 7)) & ((1u << cw) - 1u);
          bad |= (sym >> ci.width_bits) != 0;
        }
      } else {
        const uint64_t bit = uint64_t(n) * (ci.prefix_bits - base.prefix_bits) + uint64_t(i) * bits;
        const uint64_t byte = bit >> 3;
        uint32_t w = 0;
#pragma unroll
        for (int k = 0; k < 3; ++k)
          if (byte + k < job.codes_bytes) w |= uint32_t(job.codes[byte + k]) << (8 * k);
        sym = (w >> (bit & 7)) & ((1u << bits) - 1u);
      }
      // Non-finite fp16 values (exponent all ones) are CORRUPT, as in the CPU unpacker.
      if (ci.cls == 4) {
        bad |= (sym & 0x7c00u) == 0x7c00u;
        value = half_bits_to_float(sym);
      } else {
        const uint32_t v = n * ci.side_prefix + i;
        const uint32_t cnt = job.side_count;
        float scale = 0.0f, shift = 0.0f;
        if (job.side && v < cnt) {
          const uint32_t bits = uint32_t(job.side[v]) | (uint32_t(job.side[cnt + v]) << 8);
          bad |= (bits & 0x7c00u) == 0x7c00u;
          scale = half_bits_to_float(bits);
        }
        if (ci.kind == 2 && job.side && v + n < cnt) {
          const uint32_t bits = uint32_t(job.side[v + n]) | (uint32_t(job.side[cnt + v + n]) << 8);
          bad |= (bits & 0x7c00u) == 0x7c00u;
          shift = half_bits_to_float(bits);
        }
        value = dequantize_code(sym, ci.kind, ci.width_bits, scale, shift);  // the CPU's rule
      }
    }
    const uint64_t at = uint64_t(job.row0 + i) * ld + j;
    if (to_bf16)
      static_cast<__nv_bfloat16*>(job.coef)[at] = __float2bfloat16_rn(value);
    else
      static_cast<float*>(job.coef)[at] = value;
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(status + blockIdx.x, 1u);
}

__global__ void exact_convert_kernel(const ExactJob* __restrict__ jobs) {
  const ExactJob job = jobs[blockIdx.y];
  const uint32_t n = job.n_elems;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
    float v;
    if (job.dtype == 2) {
      const uint32_t u = uint32_t(job.raw[e]) | (uint32_t(job.raw[n + e]) << 8) | (uint32_t(job.raw[2 * n + e]) << 16) |
                         (uint32_t(job.raw[3 * n + e]) << 24);
      v = __uint_as_float(u);
    } else {
      const uint32_t u = uint32_t(job.raw[e]) | (uint32_t(job.raw[n + e]) << 8);
      v = job.dtype == 0 ? __uint_as_float(u << 16) : half_bits_to_float(u);
    }
    job.dst[(e / job.row_elems) * job.head_stride + e % job.row_elems] = v;
  }
}

__global__ void rope_table_kernel(const double* __restrict__ inv_freq, int half_dim, int64_t first_position,
                                  int64_t n_positions, float2* __restrict__ table) {
  const int64_t total = n_positions * half_dim;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / half_dim;
    const int i = int(e % half_dim);
    const double angle = double(first_position + t) * inv_freq[i];
    double s, c;
    sincos(angle, &s, &c);
    table[e] = make_float2(float(c), float(s));
  }
}

// Rotates one RoPE pair by (cos, sin), with the CPU's roundings (no contraction into FMAs); both
// epilogue kernels use it, so they give the same bits.
__device__ __forceinline__ void rope_pair(float& a, float& b, float2 cs) {
  const float ra = __fsub_rn(__fmul_rn(a, cs.x), __fmul_rn(b, cs.y));
  const float rb = __fadd_rn(__fmul_rn(a, cs.y), __fmul_rn(b, cs.x));
  a = ra;
  b = rb;
}

// Loads of the epilogue's source, fp32 or bf16, as fp32: one element, or two adjacent ones (aligned).
__device__ __forceinline__ float load1(const float* p) { return *p; }
__device__ __forceinline__ float load1(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float2 load2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

template <typename S>
__global__ void epilogue_kernel(EpilogueParams p) {
  const int half = p.head_dim / 2;
  const int64_t per_head = p.rows * half;
  const int64_t total = per_head * p.n_heads;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int h = int(e / per_head);
    const int64_t r = e % per_head;
    const int64_t t = r / half;
    const int i = int(r % half);
    const int ia = p.rope_style == 0 ? i : 2 * i;
    const int ib = p.rope_style == 0 ? i + half : 2 * i + 1;
    const S* src = static_cast<const S*>(p.src) + h * p.src_head_stride + t * p.src_token_stride;
    float a = __fadd_rn(load1(src + ia), p.mean[h * p.head_dim + ia]);
    float b = __fadd_rn(load1(src + ib), p.mean[h * p.head_dim + ib]);
    if (p.rope_table) rope_pair(a, b, p.rope_table[t * half + i]);
    const int64_t o = p.out.offset(h, p.t_offset + t);
    if (p.out.bf16) {
      __nv_bfloat16* d = static_cast<__nv_bfloat16*>(p.out.base) + o;
      d[ia] = __float2bfloat16_rn(a);
      d[ib] = __float2bfloat16_rn(b);
    } else {
      float* d = static_cast<float*>(p.out.base) + o;
      d[ia] = a;
      d[ib] = b;
    }
  }
}

__device__ __forceinline__ void store_two(const DstLayout& out, int64_t o, float x, float y) {
  if (out.bf16)
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(out.base) + o) = __floats2bfloat162_rn(x, y);
  else
    *reinterpret_cast<float2*>(static_cast<float*>(out.base) + o) = make_float2(x, y);
}

// The epilogue with two rotation pairs (i, i + 1) per thread, i even, for heads with head_dim / 2 even:
// loads of two elements of src (8 bytes fp32, 4 bf16) and of mean, a 16-byte load of the table,
// 4-byte bf16x2 (8-byte fp32) stores, the same fp32 operations as epilogue_kernel (so the same bits),
// and 32-bit index arithmetic within a head (grid.y is the head). launch_epilogue checks the
// alignments this needs.
template <typename S>
__global__ void epilogue_pairs_kernel(EpilogueParams p) {
  const int h = int(blockIdx.y);
  const uint32_t half = uint32_t(p.head_dim / 2), quads = half / 2;
  const uint32_t per_head = uint32_t(p.rows) * quads;
  const float* mean = p.mean + h * p.head_dim;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < per_head; e += gridDim.x * blockDim.x) {
    const uint32_t t = e / quads, i = 2 * (e - t * quads);
    const S* src = static_cast<const S*>(p.src) + h * p.src_head_stride + int64_t(t) * p.src_token_stride;
    float a0, b0, a1, b1;
    if (p.rope_style == 0) {  // pairs (i, i + half) and (i + 1, i + 1 + half)
      const float2 sa = load2(src + i), sb = load2(src + i + half);
      const float2 ma = *reinterpret_cast<const float2*>(mean + i), mb = *reinterpret_cast<const float2*>(mean + i + half);
      a0 = __fadd_rn(sa.x, ma.x);
      a1 = __fadd_rn(sa.y, ma.y);
      b0 = __fadd_rn(sb.x, mb.x);
      b1 = __fadd_rn(sb.y, mb.y);
    } else {  // pairs (2i, 2i + 1) and (2i + 2, 2i + 3)
      const float2 s0 = load2(src + 2 * i), s1 = load2(src + 2 * i + 2);
      const float2 m0 = *reinterpret_cast<const float2*>(mean + 2 * i), m1 = *reinterpret_cast<const float2*>(mean + 2 * i + 2);
      a0 = __fadd_rn(s0.x, m0.x);
      b0 = __fadd_rn(s0.y, m0.y);
      a1 = __fadd_rn(s1.x, m1.x);
      b1 = __fadd_rn(s1.y, m1.y);
    }
    if (p.rope_table) {
      const float4 cs = *reinterpret_cast<const float4*>(p.rope_table + int64_t(t) * half + i);
      rope_pair(a0, b0, make_float2(cs.x, cs.y));
      rope_pair(a1, b1, make_float2(cs.z, cs.w));
    }
    const int64_t o = p.out.offset(h, p.t_offset + t);
    if (p.rope_style == 0) {
      store_two(p.out, o + i, a0, a1);
      store_two(p.out, o + i + half, b0, b1);
    } else {
      store_two(p.out, o + 2 * i, a0, b0);
      store_two(p.out, o + 2 * i + 2, a1, b1);
    }
  }
}

__global__ void exact_scatter_kernel(const float* __restrict__ src, int64_t n, DstLayout out, int64_t t0) {
  const int64_t per_head = n * out.head_dim;
  const int64_t total = per_head * out.n_heads;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = e / per_head, r = e % per_head;
    const int64_t o = out.offset(int(h), t0 + r / out.head_dim) + r % out.head_dim;
    if (out.bf16)
      static_cast<__nv_bfloat16*>(out.base)[o] = __float2bfloat16_rn(src[e]);
    else
      static_cast<float*>(out.base)[o] = src[e];
  }
}

int grid_for(int64_t total, int block) {
  const int64_t g = (total + block - 1) / block;
  return int(g < 1 ? 1 : g > 65535 * 8 ? 65535 * 8 : g);
}

}  // namespace

cudaError_t launch_dequantize(const DequantJob* jobs_dev, int n_jobs, bool bf16, uint32_t* status_dev,
                              cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  dequantize_kernel<<<n_jobs, 256, 0, stream>>>(jobs_dev, bf16, status_dev);
  return cudaGetLastError();
}

cudaError_t launch_exact_convert(const ExactJob* jobs_dev, int n_jobs, cudaStream_t stream) {
  // Jobs go on grid.y, which holds at most 65535: large batches take several launches.
  for (int first = 0; first < n_jobs; first += 65535) {
    const int n = n_jobs - first < 65535 ? n_jobs - first : 65535;
    exact_convert_kernel<<<dim3(8, unsigned(n)), 256, 0, stream>>>(jobs_dev + first);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t launch_rope_table(const double* inv_freq_dev, int half_dim, int64_t first_position, int64_t n_positions,
                              float2* table_dev, cudaStream_t stream) {
  if (n_positions <= 0 || half_dim <= 0) return cudaSuccess;
  rope_table_kernel<<<grid_for(n_positions * half_dim, 256), 256, 0, stream>>>(inv_freq_dev, half_dim, first_position,
                                                                               n_positions, table_dev);
  return cudaGetLastError();
}

cudaError_t launch_epilogue(const EpilogueParams& p, cudaStream_t stream) {
  const int64_t total = p.rows * (p.head_dim / 2) * p.n_heads;
  if (total <= 0) return cudaSuccess;
  // The paired kernel where its vector accesses are aligned (element offsets even, base pointers to
  // two elements, the table's to 16 bytes) and a head's work fits 32-bit indices; else one pair per
  // thread.
  auto aligned = [](const void* ptr, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; };
  const int64_t quads_per_head = p.rows * (p.head_dim / 4);
  const bool paired = p.head_dim % 4 == 0 && p.src_head_stride % 2 == 0 && p.src_token_stride % 2 == 0 &&
                      aligned(p.src, p.src_bf16 ? 4 : 8) && aligned(p.mean, 8) && (!p.rope_table || aligned(p.rope_table, 16)) &&
                      aligned(p.out.base, p.out.bf16 ? 4 : 8) && (p.out.block_table || p.out.head_stride % 2 == 0) &&
                      p.n_heads <= 65535 && quads_per_head < (int64_t(1) << 31);
  if (paired) {
    const int64_t blocks = std::min<int64_t>((quads_per_head + 255) / 256, std::max<int64_t>(1, 65535 * 8 / p.n_heads));
    const dim3 grid(unsigned(blocks), unsigned(p.n_heads));
    if (p.src_bf16) epilogue_pairs_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p);
    else epilogue_pairs_kernel<float><<<grid, 256, 0, stream>>>(p);
  } else if (p.src_bf16) {
    epilogue_kernel<__nv_bfloat16><<<grid_for(total, 256), 256, 0, stream>>>(p);
  } else {
    epilogue_kernel<float><<<grid_for(total, 256), 256, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

cudaError_t launch_exact_scatter(const float* src, int64_t n, const DstLayout& out, int64_t t0, cudaStream_t stream) {
  const int64_t total = int64_t(out.n_heads) * n * out.head_dim;
  if (total <= 0) return cudaSuccess;
  exact_scatter_kernel<<<grid_for(total, 256), 256, 0, stream>>>(src, n, out, t0);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
