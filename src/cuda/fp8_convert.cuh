// FP8 (E4M3) copies of matrices for the FP8 reconstruction GEMM (cuda/fp8_gemm.hpp).
//
// Hopper's FP8 GEMM takes per-tensor scales and only the "TN" form: both operands stored with the
// reduction dimension contiguous. The restore reduces over kept components, so both the basis and
// the coefficients are wanted as [rows][components], components contiguous and padded to a multiple
// of 16 with zeros. These kernels write that copy from an fp32 or bf16 source held either way round:
// `transposed` sources are [components][rows] (the calibration's basis, codec 3's coefficients),
// the others [rows][components] (codec 2's coefficients).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::cuda {

// The largest finite E4M3 magnitude: values are scaled so that the tensor's largest maps to it.
constexpr float kE4m3Max = 448.0f;

// A tensor's scale block in device memory, kFp8ScaleFloats floats, 16-byte aligned: [0] the
// dequantisation factor amax / 448 that the GEMM reads (cuBLASLt refuses scale pointers that are not
// 16-byte aligned: seen on an H100 with cuBLASLt 13.1 as NOT_SUPPORTED from cublasLtMatmul), and
// [kFp8AmaxIndex] max |x|.
constexpr int kFp8ScaleFloats = 8;
constexpr int kFp8AmaxIndex = 4;

struct Fp8Source {
  const void* data = nullptr;
  bool bf16 = false;         // else fp32
  bool transposed = false;   // [components][rows] (else [rows][components])
  int64_t ld = 0;            // elements between consecutive outer rows of the source as stored
  int64_t rows = 0;          // rows of the output (tokens, or features of the basis)
  int64_t components = 0;    // components of the output before padding
};

// scale_dev[kFp8AmaxIndex] = max |x| over the source (it must be 0 before the launch: the kernel
// accumulates with atomicMax). The source's values must be finite.
cudaError_t launch_abs_max(const Fp8Source& src, float* scale_dev, cudaStream_t stream);

// out[r * ld_out + c] = e4m3(x(r, c) * 448 / amax) for c < components, 0 for components <= c < ld_out
// (ld_out a multiple of 16), with amax = scale_dev[kFp8AmaxIndex] (1 where it is 0). Writes the
// dequantisation factor amax / 448 to scale_dev[0] (the GEMM's per-tensor scale). Saturates to +-448.
cudaError_t launch_to_e4m3(const Fp8Source& src, float* scale_dev, uint8_t* out, int64_t ld_out, cudaStream_t stream);

// Rounds up to the FP8 GEMM's leading-dimension multiple.
inline int64_t fp8_padded(int64_t n) { return (n + 15) / 16 * 16; }

}  // namespace kvtc::cuda
