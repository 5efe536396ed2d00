// Kernels of the GPU encode path before DEFLATE (docs/FORMAT.md; the CPU twin is src/cpu/encoder.cpp):
//   gather       one stream's token vectors with RoPE removed (keys) and the mean subtracted, fp32,
//                from an uploaded fp32 copy (encode_on_gpu);
//   gather_view  the same straight from caches in device memory, contiguous or vLLM-paged, bf16 / f16 /
//                f32 (BatchEncoder);
//   quantize     every (token, group) of a stream, writing symbols and side values component-major;
//   pack         raw chunks (side, codes aligned or dense, exact byte planes), one thread per byte;
//   pack_exact   exact-token chunks from device caches, the input's bit patterns in byte planes;
//   copy         stored chunks back to back into one payload for a single device-to-host copy.
// The projection between gather and quantize is a cuBLAS GEMM (cuda/gpu_encoder.cpp).
//
// Arithmetic mirrors the CPU operation for operation (format/quant_rules.hpp; no fused multiply-add
// where the CPU rounds twice), so that gathered vectors are bit-identical to the CPU encoder's and
// identical coefficients give identical chunks. All launches are asynchronous on `stream` and return
// the launch error; pointers are device pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "format/quant_rules.hpp"

namespace kvtc::cuda {

// Tokens [token0, token0 + n) of one stream, as rows x[n][p] with p = n_lh * head_dim:
//   x[t][lh * D + d] = unrope(cache[lh][token0 + t][d]) - mean[lh * D + d]
// with the RoPE inverse rotation of RopeTable::apply(inverse) from the table rope[t][D/2] = (cos, sin)
// of the token's position (rope == nullptr: no rotation, values).
struct GatherParams {
  const float* cache = nullptr;  // [n_lh][cache_tokens][head_dim] (layers x KV heads)
  const float2* rope = nullptr;  // [n][head_dim / 2], or null
  const float* mean = nullptr;   // [p]
  float* x = nullptr;            // [n][p]
  int64_t cache_tokens = 0;
  int64_t token0 = 0;
  int64_t n = 0;
  int n_lh = 0;
  int head_dim = 0;
  int rope_style = 0;  // RopeStyle: 0 half, 1 interleaved
};
cudaError_t launch_gather(const GatherParams& params, cudaStream_t stream);

// One group of a stream that stores something (int, int-affine or fp16; dropped groups are left out).
struct QuantGroup {
  uint32_t first_component = 0;
  uint32_t n_components = 0;
  uint32_t kind = 0;        // GroupKind
  uint32_t width_bits = 0;
  uint32_t side_row = 0;    // int: its scale row; int-affine: scale row, then shift row side_row + 1
};

// For every token t < m and group g: quantize_group on coef[c][t] for the group's components c
// (coef is component-major [n_kept][m]), codes or fp16 patterns to sym[c][t], scale / shift to
// side[row][t]. One thread per (token, group).
cudaError_t launch_quantize(const float* coef, int64_t m, const QuantGroup* groups, int n_groups, uint16_t* sym,
                            uint16_t* side, cudaStream_t stream);

// Writes the raw bytes of jobs[0, n_jobs) (format/quant_rules.hpp pack_job_byte), one block per job.
cudaError_t launch_pack(const PackJob* jobs, int n_jobs, const CodesSpan* spans, cudaStream_t stream);

// A cache in device memory as a serving system holds it, one stream (keys or values) of it:
// contiguous: layers[l] is [n_heads][n_tokens][head_dim]; paged (block_table != null): layers[l] is
// vLLM's [num_blocks][2][block_size][n_heads][head_dim] and token t lies in block
// block_table[t / block_size], slot t % block_size, at index `stream` of the pair. Elements are
// `dtype` (DType: 0 bf16, 1 f16, 2 f32).
struct CacheSource {
  const void* const* layers = nullptr;  // device array of n_layers device pointers
  const int32_t* block_table = nullptr;
  int block_size = 0;
  int stream = 0;
  int n_heads = 0;
  int head_dim = 0;
  int64_t n_tokens = 0;
  uint32_t dtype = 0;
};

// launch_gather's rows (same arithmetic, bit for bit), read from a CacheSource of any dtype and
// layout instead of an fp32 copy: x[t][(l * H + h) * D + d] for tokens token0 + t, t < n. With x_bf16
// set, the rows go there instead, rounded to bf16 (nearest even): the bf16 projection's operand.
struct GatherViewParams {
  CacheSource src;
  const float2* rope = nullptr;  // [n][head_dim / 2], or null
  const float* mean = nullptr;   // [p]
  float* x = nullptr;            // [n][p]
  uint16_t* x_bf16 = nullptr;    // [n][p] bf16 bits, instead of x
  int64_t token0 = 0;
  int64_t n = 0;
  int n_layers = 0;
  int rope_style = 0;
};
cudaError_t launch_gather_view(const GatherViewParams& params, cudaStream_t stream);

// An exact chunk (docs/FORMAT.md section 5): the byte planes of layer `layer`'s tokens
// [token0, token0 + n_tokens) as [H][n][D] elements of the source's dtype, the bits as stored there.
struct ExactPackJob {
  uint8_t* dst = nullptr;
  CacheSource src;
  uint32_t layer = 0;
  uint32_t token0 = 0;
  uint32_t n_tokens = 0;
  uint32_t raw_bytes = 0;  // n_heads * n_tokens * head_dim * dtype size
};
cudaError_t launch_pack_exact(const ExactPackJob* jobs, int n_jobs, cudaStream_t stream);

struct CopyJob {
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
  uint32_t n_bytes = 0;
};
cudaError_t launch_copy(const CopyJob* jobs, int n_jobs, cudaStream_t stream);

}  // namespace kvtc::cuda
