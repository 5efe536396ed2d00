#include "cuda_workload.hpp"

#include <cublas_v2.h>
#include <lapacke.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/ecsq.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"
#include "util/half.hpp"

#ifndef KVTC_SOURCE_DIR
#define KVTC_SOURCE_DIR "."
#endif

namespace kvtc::bench {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}


Floors measure_floors() {
  Floors f;
  const size_t bytes = size_t(2) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) t.push_back(ms * 1e-3);
  }
  f.copy_bytes_per_s = 2.0 * double(bytes) / median(t);
  CK(cudaFree(a));
  CK(cudaFree(b));
  const int n = 8192;
  std::vector<uint16_t> h(size_t(n) * n);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& x : h) x = f32_to_bf16(nd(rng));
  void *A, *B, *C;
  CK(cudaMalloc(&A, h.size() * 2));
  CK(cudaMalloc(&B, h.size() * 2));
  CK(cudaMalloc(&C, h.size() * 4));
  CK(cudaMemcpy(A, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(B, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  cublasHandle_t handle;
  cublasCreate(&handle);
  const float one = 1, zero = 0;
  t.clear();
  for (int i = 0; i < 13; ++i) {
    cudaEventRecord(e0);
    cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_16BF, n, B, CUDA_R_16BF, n, &zero, C,
                 CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 3) t.push_back(ms * 1e-3);
  }
  f.bf16_flops = 2.0 * n * double(n) * n / median(t);
  cublasDestroy(handle);
  CK(cudaFree(A));
  CK(cudaFree(B));
  CK(cudaFree(C));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return f;
}

// Eigenvalues (descending) of one stream's covariance in the reference calibration cache (keys with
// RoPE removed), normalised to sum 1.
std::vector<double> reference_spectrum(const KVCache& cache, Stream s) {
  const int64_t p = cache.shape.n_features(), T = cache.n_tokens;
  RopeTable rope(cache.shape.rope, cache.shape.head_dim, cache.position_offset, T);
  std::vector<float> x(size_t(T * p));
  gather_token_vectors(cache, s, 0, T, s == Stream::kKey ? &rope : nullptr, x.data());
  std::vector<double> xd(x.begin(), x.end()), mean(size_t(p), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < p; ++f) mean[size_t(f)] += xd[size_t(t * p + f)] / double(T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < p; ++f) xd[size_t(t * p + f)] -= mean[size_t(f)];
  std::vector<double> cov(static_cast<size_t>(p * p), 0.0), w(static_cast<size_t>(p));
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, int(p), int(T), 1.0 / double(T), xd.data(), int(p), 0.0,
              cov.data(), int(p));
  if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'L', lapack_int(p), cov.data(), lapack_int(p), w.data()) != 0) return {};
  std::sort(w.begin(), w.end(), std::greater<double>());
  double sum = 0;
  for (auto& v : w) sum += (v = std::max(v, 0.0));
  for (auto& v : w) v /= sum;
  return w;
}

// A fixed 20x pattern: 8 bits/component (int-affine 6 in groups of 16) for the first p/128, int 4 in
// groups of 64 to p/16, int 2 in groups of 256 to p/4, int 1 in groups of 256 to 3p/8; 0.81 p bits.
std::vector<Group> allocation_20x(int64_t p) {
  std::vector<Group> g;
  auto add = [&](int64_t begin, int64_t end, int64_t size, GroupKind kind, int w) {
    for (int64_t c = begin; c < end; c += size) {
      Group x;
      x.first_component = uint32_t(c);
      x.n_components = uint32_t(std::min(size, end - c));
      x.kind = kind;
      x.width_bits = uint8_t(w);
      g.push_back(x);
    }
  };
  add(0, p / 128, 16, GroupKind::kIntAffine, 6);
  add(p / 128, p / 16, 64, GroupKind::kInt, 4);
  add(p / 16, p / 4, 256, GroupKind::kInt, 2);
  add(p / 4, 3 * p / 8, 256, GroupKind::kInt, 1);
  return g;
}

std::vector<double> random_orthogonal(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<double> q(size_t(n) * n);
  for (auto& x : q) x = nd(rng);
  for (int i = 0; i < n; ++i) {
    double* r = q.data() + size_t(i) * n;
    for (int pass = 0; pass < 2; ++pass)
      for (int j = 0; j < i; ++j) {
        const double* o = q.data() + size_t(j) * n;
        double d = 0;
        for (int f = 0; f < n; ++f) d += r[f] * o[f];
        for (int f = 0; f < n; ++f) r[f] -= d * o[f];
      }
    double nn = 0;
    for (int f = 0; f < n; ++f) nn += r[f] * r[f];
    nn = std::sqrt(nn);
    for (int f = 0; f < n; ++f) r[f] /= nn;
  }
  return q;
}

// Fast approximately normal samples (Irwin-Hall of 4 uniforms, unit variance): generating hundreds of
// millions of coefficients with std::normal_distribution would take longer than the benchmark.
struct FastNormal {
  uint64_t x;
  float operator()() {
    float s = 0;
    for (int i = 0; i < 4; ++i) {
      x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
      s += float((x * 0x2545f4914f6cdd1dull) >> 40) * (1.0f / 16777216.0f);
    }
    return (s - 2.0f) * 1.7320508f;
  }
};


// Builds the synthetic calibration and cache of one shape (see the file comment).
Workload make_workload(const std::string& name, int L, int H, int D, int64_t T, const std::vector<double>* spectrum,
                       uint64_t seed, bool learn_ecsq, int64_t ecsq_samples) {
  const auto t_start = Clock::now();
  Workload w;
  w.name = name;
  ModelShape shape;
  shape.n_layers = L;
  shape.n_kv_heads = H;
  shape.head_dim = D;
  shape.rope.theta = 1e6;
  const int64_t p = shape.n_features();
  const auto groups = allocation_20x(p);
  const int64_t kept = groups.back().first_component + groups.back().n_components;
  const int A = L * H;
  const auto qa = random_orthogonal(A, seed), qb = random_orthogonal(D, seed + 1);
  CalibrationData& cal = w.cal;
  cal.shape = shape;
  cal.model_name = name + "-synthetic";
  cal.ratios = {20.0};
  cal.fingerprint = 0x5157ull + seed;
  FastNormal nd{0x9e3779b97f4a7c15ull ^ seed};
  KVCache& c = w.cache;
  c.shape = shape;
  c.dtype = DType::kBF16;
  c.n_tokens = T;
  c.model_name = name;
  c.k.assign(size_t(L), std::vector<float>(size_t(H) * T * D));
  c.v = c.k;
  cublasHandle_t handle;
  cublasCreate(&handle);
  for (int s = 0; s < 2; ++s) {
    StreamCalibration& sc = s == 0 ? cal.key : cal.value;
    sc.pca.n_features = p;
    sc.pca.rank = kept;
    sc.pca.mean.resize(size_t(p));
    for (auto& m : sc.pca.mean) m = 0.2f * nd();
    // Row j of the basis: qa[j % A] (x) qb[(j / A) % D], a dense unit vector; rows are orthonormal.
    sc.pca.components.resize(size_t(kept * p));
    for (int64_t j = 0; j < kept; ++j) {
      const double* ra = qa.data() + size_t(j % A) * A;
      const double* rb = qb.data() + size_t((j / A) % D) * D;
      float* row = sc.pca.components.data() + j * p;
      for (int a = 0; a < A; ++a)
        for (int d = 0; d < D; ++d) row[int64_t(a) * D + d] = float(ra[a] * rb[d]);
    }
    // Per-component standard deviations: the reference spectrum resampled to p (or a power law).
    std::vector<float> sigma(static_cast<size_t>(kept));
    for (int64_t j = 0; j < kept; ++j) {
      double var;
      if (spectrum && !spectrum->empty()) {
        const size_t r = std::min(spectrum->size() - 1, size_t(double(j) * double(spectrum->size()) / double(p)));
        var = (*spectrum)[r] * double(spectrum->size()) / double(p);
      } else {
        var = std::pow(1.0 + double(j), -1.2);
      }
      sigma[size_t(j)] = float(std::sqrt(var * double(p)));  // features of order 1
    }
    Allocation alloc;
    alloc.target_ratio = 20.0;
    alloc.groups = groups;
    for (const Group& g : groups) alloc.bits_per_token += g.bits_per_token();
    alloc.budget_bits_per_token = budget_bits_for_ratio(p, 20.0);
    sc.allocations = {alloc};
    sc.pca.variance.assign(size_t(kept), 1.0);
    if (learn_ecsq) {
      // Own random stream, so that the cache below is the same with or without the models.
      FastNormal ne{0x6a09e667f3bcc909ull ^ (seed * 2 + uint64_t(s))};
      std::vector<float> samples(size_t(ecsq_samples * kept));
      for (int64_t t = 0; t < ecsq_samples; ++t)
        for (int64_t j = 0; j < kept; ++j) samples[size_t(t * kept + j)] = sigma[size_t(j)] * ne();
      auto model = learn_ecsq_model(samples.data(), ecsq_samples, kept, p, EcsqLearnOptions{});
      OK(model.status());
      sc.ecsq = std::move(model).value();
    }
    // x = mean + C V on the GPU (fp32), tokens in chunks.
    const int64_t chunk = 1024;
    std::vector<float> ch(size_t(chunk * kept)), xh(size_t(chunk * p));
    float *Cd, *Vd, *Xd;
    CK(cudaMalloc(&Cd, ch.size() * 4));
    CK(cudaMalloc(&Vd, sc.pca.components.size() * 4));
    CK(cudaMalloc(&Xd, xh.size() * 4));
    CK(cudaMemcpy(Vd, sc.pca.components.data(), sc.pca.components.size() * 4, cudaMemcpyHostToDevice));
    RopeTable rope(shape.rope, D, 0, T);
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
      const int64_t n = std::min(chunk, T - t0);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < kept; ++j) ch[size_t(t * kept + j)] = sigma[size_t(j)] * nd();
      CK(cudaMemcpy(Cd, ch.data(), size_t(n * kept) * 4, cudaMemcpyHostToDevice));
      const float one = 1, zero = 0;
      cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(p), int(n), int(kept), &one, Vd, int(p), Cd, int(kept), &zero,
                  Xd, int(p));
      CK(cudaMemcpy(xh.data(), Xd, size_t(n * p) * 4, cudaMemcpyDeviceToHost));
      for (int l = 0; l < L; ++l)
        for (int h = 0; h < H; ++h) {
          float* dst = (s == 0 ? c.k : c.v)[size_t(l)].data() + (int64_t(h) * T + t0) * D;
          const int64_t col = (int64_t(l) * H + h) * D;
          for (int64_t t = 0; t < n; ++t)
            for (int d = 0; d < D; ++d)
              dst[t * D + d] = bf16_to_f32(f32_to_bf16(xh[size_t(t * p + col + d)] + sc.pca.mean[size_t(col + d)]));
          if (s == 0) rope.apply(dst, t0, n, false);
          if (s == 0)
            for (int64_t e = 0; e < n * D; ++e) dst[e] = bf16_to_f32(f32_to_bf16(dst[e]));
        }
    }
    cudaFree(Cd);
    cudaFree(Vd);
    cudaFree(Xd);
  }
  cublasDestroy(handle);
  c.sync_metadata();
  std::fprintf(stderr, "workload %s built in %.1f s\n", name.c_str(), since(t_start));
  return w;
}

std::vector<double> reference_key_spectrum() {
  auto calib = read_cache(KVTC_SOURCE_DIR "/data/small-calib.safetensors");
  if (!calib.is_ok()) return {};
  return reference_spectrum(*calib, Stream::kKey);
}

}  // namespace kvtc::bench
