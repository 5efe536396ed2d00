// The floor of a CPU decode: OpenBLAS sgemm on the reconstruction's own shapes, per layer coefficients
// [m x k] times that layer's basis columns [k x n] (n = kv_heads x head_dim), row-major, as
// src/cpu/decoder.cpp calls it. Median of 7 repetitions; threads as OPENBLAS_NUM_THREADS says.
//
//   kvtc_sgemm_floor M K N LAYERS
#include <cblas.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s M K N LAYERS\n", argv[0]);
    return 2;
  }
  const int m = atoi(argv[1]), k = atoi(argv[2]), n = atoi(argv[3]), layers = atoi(argv[4]), reps = 7;
  std::vector<float> a(size_t(m) * k, 0.5f), b(size_t(k) * n * layers, 0.25f), c(size_t(m) * n);
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int l = 0; l < layers; ++l)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a.data(), k, b.data() + size_t(l) * n, n * layers, 0.0f, c.data(), n);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  const double flops = 2.0 * m * k * double(n) * layers;
  std::printf("m %d k %d n %d layers %d: median %.2f ms, %.1f GFLOP/s (min %.2f ms)\n", m, k, n, layers, t[reps / 2] * 1e3, flops / t[reps / 2] * 1e-9, t[0] * 1e3);
}
