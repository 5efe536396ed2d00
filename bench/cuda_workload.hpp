// Synthetic GPU workloads of real models' shapes, and this GPU's floors, for the CUDA benches
// (bench_cuda.cpp, bench_store_gpu.cpp).
//
// The caches are synthetic: x = mean + C V with a dense orthonormal basis V (a Kronecker product of
// two random orthogonal matrices) and coefficients C drawn with the reference model's PCA spectrum
// shape (eigenvalues of data/small-calib.safetensors, resampled to p features). The allocation is a
// fixed 20x pattern (see allocation_20x); codec 3's ECSQ models, when asked for, are learnt from more
// draws of the same coefficients.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "core/calibration_data.hpp"
#include "core/token_vectors.hpp"
#include "kvtc/kvtc.hpp"

namespace kvtc::bench {

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define OK(x)                                                                             \
  do {                                                                                    \
    Status s_ = (x);                                                                      \
    if (!s_.is_ok()) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, s_.to_string().c_str()); \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0);
double median(std::vector<double> v);

struct Floors {
  double copy_bytes_per_s = 0;  // bytes read + written per second, device to device
  double bf16_flops = 0;        // cuBLAS bf16 GEMM, fp32 accumulation, random data
};
Floors measure_floors();

// Eigenvalues (descending) of one stream's covariance in a cache (keys with RoPE removed), summing to 1.
std::vector<double> reference_spectrum(const KVCache& cache, Stream s);
// The spectrum of data/small-calib.safetensors' keys, or empty (then a power law is used).
std::vector<double> reference_key_spectrum();

struct Workload {
  std::string name;
  CalibrationData cal;
  KVCache cache;
};
// The synthetic calibration (20x allocation) and cache of one shape: L layers x H KV heads x D, T tokens.
// learn_ecsq: the calibration also gets codec 3's ECSQ models, learnt from `ecsq_samples` fresh draws of
// the same coefficient distribution (unseen data, as calibration's out-of-fold statistics are); the cache
// is the same either way.
Workload make_workload(const std::string& name, int L, int H, int D, int64_t T, const std::vector<double>* spectrum,
                       uint64_t seed, bool learn_ecsq = false, int64_t ecsq_samples = 4096);

}  // namespace kvtc::bench
