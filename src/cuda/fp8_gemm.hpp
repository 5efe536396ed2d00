// The FP8 reconstruction GEMM on cuBLASLt (Hopper and later): D = scale_a * scale_b * A^T B with A and
// B in E4M3, fp32 accumulation (or, with fast_accum, the tensor cores' own partial sums, promoted to
// fp32 only at the end) and an fp32 result (run) or the fp32 result rounded once to bf16 (run_bf16:
// half the bytes written, and half for the restore's epilogue to read), in the only form Hopper's FP8
// kernels take ("TN": A and B both stored with the reduction dimension contiguous). Column-major, as
// cuBLAS counts:
//   A: k x m, lda >= k   (stored [m][lda]: for the restore, the basis' E4M3 copy, [features][rows])
//   B: k x n, ldb >= k   (stored [n][ldb]: the coefficients' E4M3 copy, [tokens][components])
//   D: m x n, ldd >= m   (fp32 or bf16, stored [n][ldd]: [tokens][features])
// k, lda and ldb multiples of 16; the matrix pointers 16-byte aligned. The per-tensor scales are device
// pointers (cuda/fp8_convert.cuh writes them), so nothing waits for the host; cuBLASLt runs no kernel
// for scale pointers that are not 16-byte aligned, and run() refuses them. The first run
// allocates cuBLASLt's 32 MiB workspace (outside any decoder workspace).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "cuda/cuda_common.hpp"
#include "kvtc/status.hpp"

namespace kvtc::cuda {

class Fp8Gemm {
 public:
  Fp8Gemm() = default;
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;

  // Asynchronous on `stream`. The first call of a shape and pointer alignment asks cuBLASLt's heuristic
  // for candidates and keeps the first that runs; UNSUPPORTED where none does (no FP8 tensor cores:
  // before compute capability 8.9), naming the shape.
  Status run(int64_t m, int64_t n, int64_t k, const uint8_t* a, int64_t lda, const float* a_scale_dev, const uint8_t* b,
             int64_t ldb, const float* b_scale_dev, float* d, int64_t ldd, bool fast_accum, cudaStream_t stream);
  // The same product written as bf16 (d: bf16 bits).
  Status run_bf16(int64_t m, int64_t n, int64_t k, const uint8_t* a, int64_t lda, const float* a_scale_dev,
                  const uint8_t* b, int64_t ldb, const float* b_scale_dev, uint16_t* d, int64_t ldd, bool fast_accum,
                  cudaStream_t stream);
  // Either, chosen at run time: d is bf16 bits where d_bf16, else fp32.
  Status run_any(int64_t m, int64_t n, int64_t k, const uint8_t* a, int64_t lda, const float* a_scale_dev,
                 const uint8_t* b, int64_t ldb, const float* b_scale_dev, void* d, bool d_bf16, int64_t ldd,
                 bool fast_accum, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's, best first
    int chosen = -1;                                // the first that ran; -1 before the first run
  };
  // m n k lda ldb ldd, the alignment in bytes (up to 256) of the A, B and D pointers (cuBLASLt's
  // heuristic assumes 256 unless told, and its kernels refuse less-aligned pointers), fast_accum, and
  // whether D is bf16.
  using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, bool, bool>;
  Result<Plan*> plan(const Shape& shape, const float* a_scale_dev, const float* b_scale_dev);
  static void destroy(Plan& p);  // its descriptors (those made so far)

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
  std::map<Shape, Plan> plans_;
};

}  // namespace kvtc::cuda
