#include "cuda/fp8_convert.cuh"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

namespace kvtc::cuda {

namespace {

__device__ __forceinline__ float load(const Fp8Source& s, int64_t i) {
  return s.bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(s.data)[i]) : static_cast<const float*>(s.data)[i];
}

// Grid-stride over the source's outer rows: threads read along the stored rows (coalesced). The block
// reduces its maximum through shared memory and makes one atomic: with one per warp, tens of thousands
// of atomics on one address queued at L2.
__global__ void abs_max_kernel(Fp8Source s, float* scale) {
  const int64_t outer = s.transposed ? s.components : s.rows;
  const int64_t inner = s.transposed ? s.rows : s.components;
  float m = 0.0f;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y)
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < inner; i += int64_t(gridDim.x) * blockDim.x)
      m = fmaxf(m, fabsf(load(s, o * s.ld + i)));
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  __shared__ float warp_max[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  if (warp != 0) return;
  m = lane < n_warps ? warp_max[lane] : 0.0f;
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  // Non-negative floats order as their bit patterns do.
  if (lane == 0 && m > 0.0f) atomicMax(reinterpret_cast<unsigned int*>(scale + kFp8AmaxIndex), __float_as_uint(m));
}

// What both conversion kernels share. The multiplier that maps the tensor's amax to 448 (1 for an
// all-zero tensor); the grid's first thread also writes the GEMM's dequantisation factor, scale[0].
__device__ __forceinline__ float e4m3_multiplier(float* scale, bool first_thread) {
  const float amax = scale[kFp8AmaxIndex];
  if (first_thread) scale[0] = amax > 0.0f ? amax / kE4m3Max : 1.0f;
  return amax > 0.0f ? kE4m3Max / amax : 1.0f;
}

// Output components c .. c + 3 as one 32-bit word, x(j) the value of component c + j; components at or
// past s.components are 0 (the padding).
template <typename X>
__device__ __forceinline__ uint32_t e4m3_word(const Fp8Source& s, int64_t c, float mul, X x) {
  uint32_t word = 0;
  for (int j = 0; j < 4; ++j) {
    const __nv_fp8_storage_t v = __nv_cvt_float_to_fp8(x(j) * mul, __NV_SATFINITE, __NV_E4M3);
    if (c + j < s.components) word |= uint32_t(uint8_t(v)) << (8 * j);
  }
  return word;
}

constexpr int kTile = 32;

// Token-major sources ([rows][ld], codec 2's coefficients): one 32 x 32 tile of the output per block of
// 32 x 8 threads, through shared memory, so that the reads run along the source's rows and the writes
// along the output's.
__global__ void to_e4m3_kernel(Fp8Source s, float* scale, uint8_t* out, int64_t ld_out) {
  __shared__ float tile[kTile][kTile + 1];  // [r][c]
  const float mul = e4m3_multiplier(scale, blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0);
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  for (int k = threadIdx.y; k < kTile; k += blockDim.y) {
    const int64_t r = r0 + k, c = c0 + threadIdx.x;
    tile[k][threadIdx.x] = (r < s.rows && c < s.components) ? load(s, r * s.ld + c) : 0.0f;
  }
  __syncthreads();
  // Writes: four consecutive components per thread as one 32-bit store (ld_out is a multiple of 16 and
  // c0 of 32, so every store is aligned and ends within the row); 8 threads per row of the tile.
  const int tid = threadIdx.y * kTile + threadIdx.x;
  for (int i = tid; i < kTile * kTile / 4; i += kTile * blockDim.y) {
    const int k = i / (kTile / 4), c4 = (i % (kTile / 4)) * 4;
    const int64_t r = r0 + k, c = c0 + c4;
    if (r >= s.rows || c >= ld_out) continue;
    *reinterpret_cast<uint32_t*>(out + r * ld_out + c) = e4m3_word(s, c, mul, [&](int j) { return tile[k][c4 + j]; });
  }
}

// Transposed sources ([components][ld], codec 3's coefficients and the basis): a 64 x 64 tile per
// block of 256 threads. Each warp reads 64 consecutive rows of one component (two coalesced loads per
// thread), and each group of 16 threads writes one output row's 64 components as 32-bit stores: 16
// elements per thread, where a 32 x 32 tile moved 4 and spent most of its time starting blocks.
constexpr int kWideTile = 64;

__global__ void to_e4m3_transposed_kernel(Fp8Source s, float* scale, uint8_t* out, int64_t ld_out) {
  __shared__ float tile[kWideTile][kWideTile + 1];  // [c][r]; the pad spreads a column over the banks
  const float mul = e4m3_multiplier(scale, blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0);
  const int64_t r0 = int64_t(blockIdx.y) * kWideTile, c0 = int64_t(blockIdx.x) * kWideTile;
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5), n_warps = int(blockDim.x >> 5);
  for (int c = warp; c < kWideTile; c += n_warps) {
    const int64_t comp = c0 + c;
    float x0 = 0.0f, x1 = 0.0f;
    if (comp < s.components) {
      const int64_t row = comp * s.ld;
      if (r0 + lane < s.rows) x0 = load(s, row + r0 + lane);
      if (r0 + 32 + lane < s.rows) x1 = load(s, row + r0 + 32 + lane);
    }
    tile[c][lane] = x0;
    tile[c][32 + lane] = x1;
  }
  __syncthreads();
  constexpr int kWords = kWideTile / 4;  // 32-bit stores per output row of the tile
  for (int i = int(threadIdx.x); i < kWideTile * kWords; i += int(blockDim.x)) {
    const int k = i / kWords, c4 = (i % kWords) * 4;
    const int64_t r = r0 + k, c = c0 + c4;
    if (r >= s.rows || c >= ld_out) continue;  // ld_out % 4 == 0: the word ends within the row
    *reinterpret_cast<uint32_t*>(out + r * ld_out + c) = e4m3_word(s, c, mul, [&](int j) { return tile[c4 + j][k]; });
  }
}

}  // namespace

cudaError_t launch_abs_max(const Fp8Source& src, float* scale_dev, cudaStream_t stream) {
  const int64_t outer = src.transposed ? src.components : src.rows;
  const int64_t inner = src.transposed ? src.rows : src.components;
  if (outer <= 0 || inner <= 0) return cudaSuccess;
  const int threads = 256;
  const dim3 grid(unsigned((inner + threads - 1) / threads < 8 ? (inner + threads - 1) / threads : 8),
                  unsigned(outer < 4096 ? outer : 4096));
  abs_max_kernel<<<grid, threads, 0, stream>>>(src, scale_dev);
  return cudaGetLastError();
}

cudaError_t launch_to_e4m3(const Fp8Source& src, float* scale_dev, uint8_t* out, int64_t ld_out, cudaStream_t stream) {
  if (src.rows <= 0 || ld_out <= 0) return cudaSuccess;
  if (ld_out % 4 != 0 || reinterpret_cast<uintptr_t>(out) % 4 != 0) return cudaErrorInvalidValue;  // 32-bit stores
  if (src.transposed) {
    const dim3 grid(unsigned((ld_out + kWideTile - 1) / kWideTile), unsigned((src.rows + kWideTile - 1) / kWideTile));
    to_e4m3_transposed_kernel<<<grid, 256, 0, stream>>>(src, scale_dev, out, ld_out);
    return cudaGetLastError();
  }
  const dim3 grid(unsigned((ld_out + kTile - 1) / kTile), unsigned((src.rows + kTile - 1) / kTile));
  to_e4m3_kernel<<<grid, dim3(kTile, 8), 0, stream>>>(src, scale_dev, out, ld_out);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
