// CUDA backend benchmark: GPU decode + layer restore throughput per stage, against this run's own
// floors (device copy bandwidth, cuBLAS bf16 GEMM rate), for the reference model's shape and for
// Mistral NeMo 12B's shape. Prints one JSON object per measurement and a table at the end.
//
// The caches are synthetic: x = mean + C V with a dense orthonormal basis V (a Kronecker product of
// two random orthogonal matrices) and coefficients C drawn with the reference model's PCA spectrum
// shape (eigenvalues of data/small-calib.safetensors, resampled to p features). The allocation is a
// fixed 20x pattern (see allocation_20x). Containers are written by the CPU encoder.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <lapacke.h>
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"
#include "cuda/cuda_backend.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

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
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Floors {
  double copy_bytes_per_s = 0;  // bytes read + written per second, device to device
  double bf16_flops = 0;        // cuBLAS bf16 GEMM, fp32 accumulation, random data
};

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

struct Workload {
  std::string name;
  CalibrationData cal;
  KVCache cache;
};

// Builds the synthetic calibration and cache of one shape (see the file comment).
Workload make_workload(const std::string& name, int L, int H, int D, int64_t T, const std::vector<double>* spectrum,
                       uint64_t seed) {
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

struct Row {
  std::string name;
  double raw_bytes = 0, file_bytes = 0;
  double encode_cpu_s = 0;
  double upload_s = 0, inflate_s = 0, dequant_s = 0, exact_s = 0, decode_s = 0, decode_wall_s = 0;
  double restore_s = 0, first_layer_s = 0, total_wall_s = 0, host_s = 0, wait_s = 0;
  double inflated_bytes = 0;
  double inflate_nocrc_s = 0, coef_inflated_bytes = 0;
  double floor_s = 0, floor_bytes_s = 0, floor_gemm_s = 0;
  double bf16_rel_err = -1;
};

// Compress on the GPU (CudaBackend::encode, the path of encode_on_gpu) of the workload's host cache:
// one warm-up, then medians of 3 runs of every stage (CUDA events), in ms and GB/s of raw cache.
void measure_gpu_encode(const Workload& w, const CalibrationData& cal, const EncodeOptions& eo) {
  auto gpu = make_cuda_backend();
  std::vector<double> v[9];
  double file_bytes = 0;
  for (int rep = 0; rep < 4; ++rep) {
    CudaEncodeProbe probe;
    auto e = cuda_encode_probe(*gpu, cal, w.cache, eo, &probe);
    OK(e.status());
    file_bytes = double(e->bytes.size());
    if (rep == 0) continue;
    const double st[9] = {probe.host_s, probe.upload_s, probe.gather_s, probe.gemm_s, probe.quantize_s,
                          probe.pack_s, probe.deflate_s, probe.d2h_s, probe.total_s};
    for (int i = 0; i < 9; ++i) v[i].push_back(st[i]);
  }
  const double raw = double(w.cache.n_tokens) * w.cache.shape.n_features() * 2 * 2;
  double m[9];
  for (int i = 0; i < 9; ++i) m[i] = median(v[i]);
  const double device_s = m[2] + m[3] + m[4] + m[5] + m[6] + m[7];
  std::printf("{\"gpu_encode\":\"%s\",\"raw_bytes\":%.0f,\"file_bytes\":%.0f,\"ratio\":%.2f,\"host_ms\":%.3f,"
              "\"upload_ms\":%.3f,\"gather_ms\":%.3f,\"gemm_ms\":%.3f,\"quantize_ms\":%.3f,\"pack_ms\":%.3f,"
              "\"deflate_ms\":%.3f,\"d2h_ms\":%.3f,\"total_ms\":%.3f,\"GBps_device_stages\":%.2f,\"GBps_total\":%.2f}\n",
              w.name.c_str(), raw, file_bytes, raw / file_bytes, m[0] * 1e3, m[1] * 1e3, m[2] * 1e3, m[3] * 1e3,
              m[4] * 1e3, m[5] * 1e3, m[6] * 1e3, m[7] * 1e3, m[8] * 1e3, raw / device_s * 1e-9, raw / m[8] * 1e-9);
  std::fflush(stdout);
}

// overlap_exact: exact chunks inflate on a second stream (BatchDecodeOptions). The container of the
// last call is reused when the workload and chunking repeat (the CPU encode of NeMo's shape takes
// about 100 s).
Row run_workload(const Workload& w, const Floors& floors, int chunk_tokens, int64_t chunk_max_bytes, int reps,
                 int batch, bool overlap_exact = false, bool defer_status = false) {
  Row r;
  r.name = w.name + " chunk " + std::to_string(chunk_tokens) + "x" + std::to_string(chunk_max_bytes / 1024) + "K" +
           (batch > 1 ? " batch " + std::to_string(batch) : "") + (overlap_exact ? " overlap" : "") +
           (defer_status ? " deferred" : "");
  const auto cal_data = std::make_shared<CalibrationData>(w.cal);
  const Calibration cal(cal_data);
  EncodeOptions eo;
  eo.target_ratio = 20.0;
  eo.chunk_tokens = chunk_tokens;
  eo.chunk_max_bytes = chunk_max_bytes;
  eo.measure_error = false;
  static std::string cached_key;
  static std::optional<EncodedCache> cached;
  static double cached_encode_s = 0;
  const std::string key = w.name + "/" + std::to_string(chunk_tokens) + "/" + std::to_string(chunk_max_bytes);
  if (key != cached_key || !cached) {
    cached.reset();
    auto t0 = Clock::now();
    auto e = make_cpu_backend()->encode(*cal_data, w.cache, eo, nullptr);
    OK(e.status());
    cached = std::move(e).value();
    cached_key = key;
    cached_encode_s = since(t0);
    measure_gpu_encode(w, *cal_data, eo);
  }
  EncodedCache* enc = &*cached;
  r.encode_cpu_s = cached_encode_s;
  std::fprintf(stderr, "%s: CPU encode %.2f s\n", r.name.c_str(), r.encode_cpu_s);
  const ModelShape& sh = w.cache.shape;
  const int64_t p = sh.n_features(), T = w.cache.n_tokens;
  r.raw_bytes = double(T) * p * 2 * 2 * batch;
  r.file_bytes = double(enc->bytes.size()) * batch;
  auto parsed = parse_container(enc->bytes.data(), enc->bytes.size());
  OK(parsed.status());
  for (const ChunkEntry& c : parsed->header.chunks) {
    r.inflated_bytes += double(c.raw_bytes) * batch;
    if (c.kind != ChunkKind::kExact) r.coef_inflated_bytes += double(c.raw_bytes) * batch;
  }

  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  cuda::DeviceCalibration::Options dopt;
  dopt.fp32 = false;
  auto dcal = cuda::DeviceCalibration::upload(cal, dopt, stream);
  OK(dcal.status());
  cuda::BatchDecoder dec;
  cuda::BatchDecodeOptions bo;
  bo.keep_fp32 = false;
  bo.overlap_exact = overlap_exact;
  bo.defer_status = defer_status;  // restores queue right behind the decode; statuses checked at the end
  // Compressed caches wait in pinned host memory, as a serving system keeps them.
  CK(cudaHostRegister(enc->bytes.data(), enc->bytes.size(), cudaHostRegisterDefault));
  std::vector<cuda::ContainerView> views(size_t(batch), {enc->bytes.data(), enc->bytes.size()});
  const int L = sh.n_layers;
  const size_t layer_elems = size_t(sh.n_kv_heads) * T * sh.head_dim;
  void* out;
  CK(cudaMalloc(&out, size_t(L) * 2 * layer_elems * 2));
  std::vector<void*> kp(static_cast<size_t>(L)), vp(static_cast<size_t>(L)), ev(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    kp[size_t(l)] = static_cast<uint8_t*>(out) + (2 * size_t(l)) * layer_elems * 2;
    vp[size_t(l)] = static_cast<uint8_t*>(out) + (2 * size_t(l) + 1) * layer_elems * 2;
    cudaEvent_t e;
    cudaEventCreate(&e);
    ev[size_t(l)] = e;
  }
  cudaEvent_t start;
  cudaEventCreate(&start);
  std::vector<double> up, inf, dq, ex, dtot, dwall, rest, first, wall, host, wait;
  for (int rep = 0; rep < reps + 1; ++rep) {
    CK(cudaStreamSynchronize(stream));
    const auto w0 = Clock::now();
    OK(dec.decode(*dcal, views, bo, stream));
    const double decode_wall = since(w0);
    cudaEventRecord(start, stream);
    for (int q = 0; q < batch; ++q)
      OK(dec.restore_all(*dcal, q, kp.data(), vp.data(), cuda::ElementType::kBF16, stream, ev.data()));
    CK(cudaStreamSynchronize(stream));
    OK(dec.status());
    const double total = since(w0);
    if (rep == 0) continue;  // warm-up
    const auto t = dec.last_times();
    up.push_back(t.upload_s);
    host.push_back(t.host_s);
    wait.push_back(t.wait_s);
    inf.push_back(t.inflate_s);
    dq.push_back(t.dequantize_s);
    ex.push_back(t.exact_s);  // exact chunks on the side stream (overlapped)
    dtot.push_back(t.total_s);
    dwall.push_back(decode_wall);
    float ms_all, ms_first;
    cudaEventElapsedTime(&ms_all, start, static_cast<cudaEvent_t>(ev[size_t(L - 1)]));
    cudaEventElapsedTime(&ms_first, start, static_cast<cudaEvent_t>(ev[0]));
    rest.push_back(ms_all * 1e-3);
    first.push_back(ms_first * 1e-3);
    wall.push_back(total);
  }
  // Diagnostic: the coefficient inflate without CRC checks.
  {
    cuda::BatchDecodeOptions nocrc = bo;
    nocrc.verify_checksums = false;
    std::vector<double> t_nocrc;
    for (int rep = 0; rep < reps; ++rep) {
      OK(dec.decode(*dcal, views, nocrc, stream));
      OK(dec.status());
      t_nocrc.push_back(dec.last_times().inflate_s);
    }
    r.inflate_nocrc_s = median(t_nocrc);
  }
  r.upload_s = median(up);
  r.host_s = median(host);
  r.wait_s = median(wait);
  r.inflate_s = median(inf);
  r.dequant_s = median(dq);
  r.exact_s = median(ex);
  r.decode_s = median(dtot);
  r.decode_wall_s = median(dwall);
  r.restore_s = median(rest);
  r.first_layer_s = median(first);
  r.total_wall_s = median(wall);
  // Layer timeline of the last repetition: when each layer's event completed, from restore start.
  std::printf("{\"timeline\":\"%s\",\"layer_ready_ms\":[", r.name.c_str());
  for (int l = 0; l < L; ++l) {
    float ms;
    cudaEventElapsedTime(&ms, start, static_cast<cudaEvent_t>(ev[size_t(l)]));
    std::printf("%s%.3f", l ? "," : "", ms);
  }
  std::printf("]}\n");
  // Floors: bytes that must move on the device (compressed payload read, inflated chunks written and
  // read, bf16 coefficients written and read once, bf16 basis rows read, bf16 output written) over
  // copy bandwidth; reconstruction FLOPs over the bf16 GEMM rate.
  double gemm_flops = 0, bytes = r.file_bytes + 2 * r.inflated_bytes + r.raw_bytes;
  for (int s = 0; s < 2; ++s) {
    const double kept = double(parsed->header.streams[s].n_kept());
    const double m = double(parsed->header.n_compressed_tokens());
    gemm_flops += 2.0 * m * kept * double(p) * batch;
    bytes += 2.0 * m * kept * 2 * batch + kept * double(p) * 2;
  }
  r.floor_bytes_s = bytes / floors.copy_bytes_per_s;
  r.floor_gemm_s = gemm_flops / floors.bf16_flops;
  r.floor_s = std::max(r.floor_bytes_s, r.floor_gemm_s);
  // Accuracy of the bf16 path on layer 0 of sequence 0 against the CPU decoder (fp32).
  if (p <= 8192) {
    auto cpu = make_cpu_backend();
    auto cd = cpu->decode_coefficients(*cal_data, enc->bytes.data(), enc->bytes.size(), DecodeOptions{}, nullptr);
    OK(cd.status());
    std::vector<float> kc(layer_elems), vc(layer_elems);
    OK(cpu->restore_layer(*cal_data, *cd, 0, kc.data(), vc.data(), 0, nullptr));
    std::vector<uint16_t> kg(layer_elems);
    CK(cudaMemcpy(kg.data(), kp[0], layer_elems * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < layer_elems; ++i) {
      const double d = double(bf16_to_f32(kg[i])) - kc[i];
      num += d * d;
      den += double(kc[i]) * kc[i];
    }
    r.bf16_rel_err = std::sqrt(num / den);
  }
  for (void* e : ev) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaEventDestroy(start);
  cudaFree(out);
  cudaStreamDestroy(stream);
  cudaHostUnregister(enc->bytes.data());
  const double gb = 1e-9;
  std::printf(
      "{\"case\":\"%s\",\"raw_bytes\":%.0f,\"file_bytes\":%.0f,\"ratio\":%.2f,\"inflated_bytes\":%.0f,"
      "\"encode_cpu_s\":%.4f,\"upload_s\":%.6f,\"inflate_s\":%.6f,\"dequantize_s\":%.6f,\"exact_s\":%.6f,"
      "\"decode_device_s\":%.6f,\"decode_wall_s\":%.6f,\"restore_all_s\":%.6f,\"first_layer_s\":%.6f,"
      "\"total_wall_s\":%.6f,\"floor_s\":%.6f,\"floor_bytes_s\":%.6f,\"floor_gemm_s\":%.6f,"
      "\"coef_inflate_GBps_inflated\":%.1f,\"inflate_GBps_raw_cache\":%.1f,\"bf16_rel_l2_err_layer0_keys\":%.3g,"
      "\"coef_inflate_nocrc_s\":%.6f,\"decode_host_s\":%.6f,\"decode_wait_s\":%.6f}\n",
      r.name.c_str(), r.raw_bytes, r.file_bytes, r.raw_bytes / r.file_bytes, r.inflated_bytes, r.encode_cpu_s, r.upload_s,
      r.inflate_s, r.dequant_s, r.exact_s, r.decode_s, r.decode_wall_s, r.restore_s, r.first_layer_s, r.total_wall_s,
      r.floor_s, r.floor_bytes_s, r.floor_gemm_s, r.coef_inflated_bytes / r.inflate_s * gb, r.raw_bytes / r.inflate_s * gb,
      r.bf16_rel_err, r.inflate_nocrc_s, r.host_s, r.wait_s);
  std::fflush(stdout);
  return r;
}

}  // namespace
}  // namespace kvtc

int main(int argc, char** argv) {
  using namespace kvtc;
  std::string why;
  if (!cuda_device_available(&why)) {
    std::printf("SKIPPED: %s\n", why.c_str());
    return 0;
  }
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 8192;
  const bool nemo = argc > 2 ? std::string(argv[2]) != "ref-only" : true;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("{\"device\":\"%s\",\"sms\":%d,\"l2_bytes\":%d,\"tokens\":%lld}\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize, (long long)tokens);
  const Floors floors = measure_floors();
  std::printf("{\"floor_copy_GBps_read_plus_write\":%.1f,\"floor_bf16_TFLOPs\":%.1f}\n", floors.copy_bytes_per_s * 1e-9,
              floors.bf16_flops * 1e-12);
  std::vector<double> spectrum[2];
  auto calib = read_cache(KVTC_SOURCE_DIR "/data/small-calib.safetensors");
  if (calib.is_ok()) {
    spectrum[0] = reference_spectrum(*calib, Stream::kKey);
    spectrum[1] = reference_spectrum(*calib, Stream::kValue);
  }
  std::printf("{\"spectrum\":\"%s\"}\n", spectrum[0].empty() ? "power law (reference cache unreadable)"
                                                             : "reference model keys (data/small-calib.safetensors)");
  std::vector<Row> rows;
  {
    const Workload ref = make_workload("ref 8x2x128", 8, 2, 128, tokens, &spectrum[0], 1);
    rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 1));  // the encoder's defaults
    rows.push_back(run_workload(ref, floors, 64, 16 << 10, 5, 1));
    rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 8));
    rows.push_back(run_workload(ref, floors, 256, 16 << 10, 5, 8, /*overlap_exact=*/true));
  }
  if (nemo) {
    const Workload big = make_workload("nemo 40x8x128", 40, 8, 128, tokens, &spectrum[0], 2);
    // The encoder's defaults: 256-token blocks, lowered to 65 tokens by block_tokens() because this
    // allocation carries 250 side bytes per token (side chunks stay within 16 KiB).
    rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1));
    rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1, /*overlap_exact=*/true));
    rows.push_back(run_workload(big, floors, 256, 16 << 10, 5, 1, /*overlap_exact=*/false, /*defer_status=*/true));
  }
  std::printf("\n%-34s %8s %9s %9s %9s %9s %9s %9s %9s %7s\n", "case (times in ms)", "ratio", "inflate", "dequant",
              "exact||", "restore", "wall", "floor", "inflGB/s", "x floor");
  for (const Row& r : rows) {
    std::printf("%-34s %8.2f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.1f %7.2f\n", r.name.c_str(), r.raw_bytes / r.file_bytes,
                r.inflate_s * 1e3, r.dequant_s * 1e3, r.exact_s * 1e3, r.restore_s * 1e3, r.total_wall_s * 1e3,
                r.floor_s * 1e3, r.coef_inflated_bytes / r.inflate_s * 1e-9, r.total_wall_s / r.floor_s);
  }
  return 0;
}
