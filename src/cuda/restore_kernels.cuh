// Kernels of the GPU restore path after inflate: unpack + dequantise coefficient chunks, convert
// exact-token chunks, build the RoPE table, and the per-layer epilogue (mean + RoPE + scatter).
// The arithmetic mirrors src/core/quant.cpp's dequantize_value and src/core/rope.cpp operation for
// operation (no fused multiply-add where the CPU rounds twice), so coefficients are bit-identical to
// the CPU decoder's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::cuda {

// Per kept component of a stream: what the unpacker needs to find its codes in any chunk.
struct CompInfo {
  uint8_t kind = 0;          // GroupKind
  uint8_t width_bits = 0;    // as in the group entry
  uint8_t cls = 0;           // container class: 0..3 for 1/2/4/8-bit containers, 4 fp16, 5 dropped
  uint8_t pad = 0;
  uint32_t side_prefix = 0;  // side values per token before this component's group
  uint32_t prefix_bits = 0;  // value bits of components before this one (dense layout)
  uint32_t prefix_count[5] = {0, 0, 0, 0, 0};  // components before this one per class 0..4
};

struct DequantJob {
  const uint8_t* codes = nullptr;  // inflated codes chunk (device)
  const uint8_t* side = nullptr;   // inflated side chunk of the same block (device), or null
  const CompInfo* comps = nullptr; // the stream's component table (device)
  void* coef = nullptr;            // the stream's coefficients [M][ld] (device), float or bf16
  uint32_t codes_bytes = 0;
  uint32_t side_count = 0;         // f16 values in the side chunk
  uint32_t n_tokens = 0;
  uint32_t row0 = 0;               // first coefficient row (token_begin - n_head_exact)
  uint32_t c0 = 0, c1 = 0;         // components
  uint32_t ld = 0;                 // row stride of coef (n_kept)
  uint32_t layout = 0;             // CodesLayout
};

// status_dev[i] |= 1 when a code of job i exceeds its width, or an fp16 value or side scale / shift
// it reads is not finite (what the CPU unpacker rejects as CORRUPT).
// bf16: write bf16 coefficients instead of fp32.
cudaError_t launch_dequantize(const DequantJob* jobs_dev, int n_jobs, bool bf16, uint32_t* status_dev,
                              cudaStream_t stream);

// Exact chunk: byte planes of n_elems elements of `dtype` (0 bf16, 1 f16, 2 f32) to fp32.
// One exact chunk: n_elems values [H][n][D] in byte planes -> fp32. Element e goes to
// dst[(e / row_elems) * head_stride + e % row_elems]: the chunk's token rows inside its segment's block.
struct ExactJob {
  const uint8_t* raw = nullptr;
  float* dst = nullptr;
  uint32_t n_elems = 0;
  uint32_t dtype = 0;
  uint32_t row_elems = 0;    // n * D
  uint32_t head_stride = 0;  // segment tokens * D
};
cudaError_t launch_exact_convert(const ExactJob* jobs_dev, int n_jobs, cudaStream_t stream);

// cos/sin table [n_positions][head_dim / 2] for positions first_position + t: angles in double,
// rounded to fp32 once, as RopeTable does.
cudaError_t launch_rope_table(const double* inv_freq_dev, int half_dim, int64_t first_position, int64_t n_positions,
                              float2* table_dev, cudaStream_t stream);

// Where element (head h, token t, dim d) of a restored layer goes, t counted from the sequence start:
// contiguous [H][T][D] (head_stride = T * D), or, with a block table, vLLM's paged layer cache
// [num_blocks][2][block_size][H][D] (kv: 0 keys, 1 values; token t in block block_table[t / block_size],
// slot t % block_size).
struct DstLayout {
  void* base = nullptr;
  bool bf16 = false;
  int64_t head_stride = 0;
  const int32_t* block_table = nullptr;
  int block_size = 0;
  int kv = 0;
  int n_heads = 0, head_dim = 0;
#ifdef __CUDACC__
  __device__ int64_t offset(int h, int64_t t) const {  // of d = 0
    if (block_table == nullptr) return h * head_stride + t * head_dim;
    const int64_t blk = block_table[t / block_size];
    return ((blk * 2 + kv) * block_size + t % block_size) * int64_t(n_heads) * head_dim + int64_t(h) * head_dim;
  }
#endif
};

// Epilogue of one layer and stream: out(h, t_offset + t, d) = rope(src[h][t][d] + mean[h*D + d]) for
// t < rows, in fp32. src is fp32 (or bf16 where src_bf16: the FP8 GEMM's bf16 output) with head stride
// src_head_stride and token stride src_token_stride, in elements (an fp32 src may alias a contiguous
// fp32 out).
// rope_table null: no rotation (values). rope_style 0 half, 1 interleaved.
struct EpilogueParams {
  const void* src = nullptr;
  bool src_bf16 = false;
  int64_t src_head_stride = 0;
  int64_t src_token_stride = 0;
  DstLayout out;
  int64_t t_offset = 0;
  const float* mean = nullptr;  // this layer's H * D means
  const float2* rope_table = nullptr;
  int rope_style = 0;
  int n_heads = 0, head_dim = 0;
  int64_t rows = 0;
};
cudaError_t launch_epilogue(const EpilogueParams& p, cudaStream_t stream);

// Copies rows [0, n) of an exact fp32 block [H][n][D] to out's tokens [t0, t0 + n).
cudaError_t launch_exact_scatter(const float* src, int64_t n, const DstLayout& out, int64_t t0, cudaStream_t stream);

}  // namespace kvtc::cuda
