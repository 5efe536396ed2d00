// Layer-pipelined restore with the model running (bench/RESULTS.md, "Layer-pipelined restore"):
// a compressed 8K-token cache of Mistral NeMo 12B's shape waits in pinned host memory; the batched
// API decodes it and restores layer after layer on one stream, recording a CUDA event per layer,
// while a second stream runs the model's layers for the new tokens, each waiting only for its own
// layer's event. Against the serial order (restore everything, then run the layers) this hides the
// model's compute under the restore. Both of vLLM's paged layout and a contiguous one, bf16 and FP8
// reconstruction.
//
// The model is a stand-in with NeMo's dimensions and random bf16 weights (its cost, not its values,
// matters here): per layer the QKV projection, attention of the new tokens over the restored cache
// (pipeline_kernels.cu: split over keys as flash-decoding does; the new tokens' own keys are left out), the output projection and the gated
// MLP, all cuBLAS bf16 GEMMs; no norms, residuals or logits. The cache is bench/cuda_workload's
// synthetic NeMo cache, compressed by the CPU encoder at 20x.
//
//   kvtc_bench_cuda_pipeline [tokens, default 8192] [new tokens, comma-separated, default 1,16]
// Prints one JSON object per case and a table.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_backend.hpp"
#include "cuda_workload.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "pipeline_kernels.cuh"

namespace kvtc::bench {
namespace {

#define CB(x)                                                                    \
  do {                                                                           \
    cublasStatus_t s_ = (x);                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                           \
      std::fprintf(stderr, "%s:%d %s: cuBLAS %d\n", __FILE__, __LINE__, #x, int(s_)); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

struct Dims {
  const char* name;
  int layers, hidden, q_heads, kv_heads, inter;
};
constexpr int kHeadDim = 128;
constexpr int kBlock = 16;  // vLLM's default block size

struct Model {
  Dims d;
  int64_t qkv_n = 0;
  std::vector<uint16_t*> wqkv, wo, wgu, wdown;  // per layer, row-major [in][out] bf16
  uint16_t *x = nullptr, *qkv = nullptr, *o = nullptr, *h = nullptr, *gu = nullptr, *act = nullptr;
  float* scratch = nullptr;  // split-key attention partials
};

uint16_t* alloc_bf16(int64_t n) {
  void* p = nullptr;
  CK(cudaMalloc(&p, size_t(n) * 2));
  return static_cast<uint16_t*>(p);
}

Model make_model(const Dims& d, int max_new) {
  Model m;
  m.d = d;
  m.qkv_n = int64_t(d.q_heads + 2 * d.kv_heads) * kHeadDim;
  const int64_t qd = int64_t(d.q_heads) * kHeadDim;
  uint64_t seed = 1;
  auto weight = [&](int64_t in, int64_t out) {
    uint16_t* w = alloc_bf16(in * out);
    CK(launch_fill_bf16(w, in * out, seed++, 1.0f / float(std::sqrt(double(in))), nullptr));
    return w;
  };
  for (int l = 0; l < d.layers; ++l) {
    m.wqkv.push_back(weight(d.hidden, m.qkv_n));
    m.wo.push_back(weight(qd, d.hidden));
    m.wgu.push_back(weight(d.hidden, 2 * int64_t(d.inter)));
    m.wdown.push_back(weight(d.inter, d.hidden));
  }
  m.x = alloc_bf16(int64_t(max_new) * d.hidden);
  CK(launch_fill_bf16(m.x, int64_t(max_new) * d.hidden, 99, 1.0f, nullptr));
  m.qkv = alloc_bf16(int64_t(max_new) * m.qkv_n);
  m.o = alloc_bf16(int64_t(max_new) * qd);
  m.h = alloc_bf16(int64_t(max_new) * d.hidden);
  m.gu = alloc_bf16(int64_t(max_new) * 2 * d.inter);
  m.act = alloc_bf16(int64_t(max_new) * d.inter);
  CK(cudaMalloc(reinterpret_cast<void**>(&m.scratch), size_t(attention_scratch_floats(max_new, d.q_heads)) * 4));
  CK(cudaDeviceSynchronize());
  return m;
}

// y [n][out] = x [n][in] @ w [in][out], all row-major bf16, fp32 accumulation.
void gemm(cublasHandle_t hd, const uint16_t* x, const uint16_t* w, uint16_t* y, int n, int64_t in, int64_t out) {
  const float one = 1.0f, zero = 0.0f;
  CB(cublasGemmEx(hd, CUBLAS_OP_N, CUBLAS_OP_N, int(out), n, int(in), &one, w, CUDA_R_16BF, int(out), x, CUDA_R_16BF,
                  int(in), &zero, y, CUDA_R_16BF, int(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// One layer for n new tokens over n_keys restored tokens of that layer, on the handle's stream.
void layer_forward(cublasHandle_t hd, Model& m, int l, const KvLayout& k, const KvLayout& v, int64_t n_keys, int n,
                   cudaStream_t stream) {
  const Dims& d = m.d;
  gemm(hd, m.x, m.wqkv[size_t(l)], m.qkv, n, d.hidden, m.qkv_n);
  CK(launch_attention(m.qkv, m.qkv_n, n, d.q_heads, k, v, n_keys, m.scratch, m.o, stream));
  gemm(hd, m.o, m.wo[size_t(l)], m.h, n, int64_t(d.q_heads) * kHeadDim, d.hidden);
  gemm(hd, m.h, m.wgu[size_t(l)], m.gu, n, d.hidden, 2 * int64_t(d.inter));
  CK(launch_silu_mul(m.gu, n, d.inter, m.act, stream));
  gemm(hd, m.act, m.wdown[size_t(l)], m.x, n, d.inter, d.hidden);
}

// Restored layers in device memory: contiguous K and V per layer, or one paged cache per layer.
struct KvStore {
  bool paged = false;
  int64_t tokens = 0;
  int kv_heads = 0;
  std::vector<void*> k, v, pages;
  int32_t* table = nullptr;

  KvLayout layout(int l, int kv) const {
    KvLayout x;
    x.n_heads = kv_heads;
    if (paged) {
      x.base = static_cast<const uint16_t*>(pages[size_t(l)]);
      x.block_table = table;
      x.block_size = kBlock;
      x.kv = kv;
    } else {
      x.base = static_cast<const uint16_t*>(kv == 0 ? k[size_t(l)] : v[size_t(l)]);
      x.head_stride = tokens * kHeadDim;
    }
    return x;
  }
};

KvStore make_store(bool paged, int layers, int kv_heads, int64_t tokens) {
  KvStore s;
  s.paged = paged;
  s.tokens = tokens;
  s.kv_heads = kv_heads;
  const int64_t per = int64_t(kv_heads) * tokens * kHeadDim;
  const int64_t n_blocks = (tokens + kBlock - 1) / kBlock;
  for (int l = 0; l < layers; ++l) {
    if (paged) {
      s.pages.push_back(alloc_bf16(n_blocks * 2 * kBlock * kv_heads * kHeadDim));
    } else {
      s.k.push_back(alloc_bf16(per));
      s.v.push_back(alloc_bf16(per));
    }
  }
  if (paged) {  // a reversed block table: pages out of order, as a serving engine hands them out
    std::vector<int32_t> t(static_cast<size_t>(n_blocks));
    for (int64_t b = 0; b < n_blocks; ++b) t[size_t(b)] = int32_t(n_blocks - 1 - b);
    void* p = nullptr;
    CK(cudaMalloc(&p, t.size() * 4));
    CK(cudaMemcpy(p, t.data(), t.size() * 4, cudaMemcpyHostToDevice));
    s.table = static_cast<int32_t*>(p);
  }
  return s;
}

// Restores layer l into the store on `stream`.
void restore_layer(cuda::BatchDecoder& dec, const cuda::DeviceCalibration& dcal, const KvStore& s, int l,
                   cudaStream_t stream) {
  if (s.paged)
    OK(dec.restore_layer_paged(dcal, 0, l, s.pages[size_t(l)], s.table, kBlock, cuda::ElementType::kBF16, stream));
  else
    OK(dec.restore_layer(dcal, 0, l, s.k[size_t(l)], s.v[size_t(l)], cuda::ElementType::kBF16, stream));
}

struct Times {
  double serial_s = 0, pipelined_s = 0, restore_only_s = 0, compute_only_s = 0;
  double first_start_s = 0, restore_end_s = 0;  // pipelined: layer 0's compute start, last layer restored
  int started_before_restore_end = 0;          // layers whose compute began before the restore ended
};

float ms_between(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

Times run_case(const Model& model_in, cublasHandle_t hd, cuda::BatchDecoder& dec, const cuda::DeviceCalibration& dcal,
               const std::vector<cuda::ContainerView>& views, const KvStore& store, bool fp8, int n_new, int reps) {
  Model model = model_in;
  const int L = model.d.layers;
  cudaStream_t s1, s2;
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  std::vector<cudaEvent_t> ready(static_cast<size_t>(L)), start(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    CK(cudaEventCreate(&ready[size_t(l)]));
    CK(cudaEventCreate(&start[size_t(l)]));
  }
  cudaEvent_t begin;
  CK(cudaEventCreate(&begin));
  cuda::BatchDecodeOptions bo;
  bo.keep_fp32 = false;
  bo.defer_status = true;  // restores queue behind the decode; statuses checked after each run
  bo.fp8_reconstruction = fp8;
  std::vector<double> serial, pipe, restore_only, compute_only, first_start, restore_end;
  std::vector<int> early;
  for (int rep = 0; rep <= reps; ++rep) {
    // Restore alone.
    CK(cudaDeviceSynchronize());
    auto t0 = Clock::now();
    OK(dec.decode(dcal, views, bo, s1));
    for (int l = 0; l < L; ++l) restore_layer(dec, dcal, store, l, s1);
    CK(cudaStreamSynchronize(s1));
    OK(dec.status());
    const double r_only = since(t0);
    // The model alone, on the restored cache.
    CB(cublasSetStream(hd, s2));
    t0 = Clock::now();
    for (int l = 0; l < L; ++l) layer_forward(hd, model, l, store.layout(l, 0), store.layout(l, 1), store.tokens, n_new, s2);
    CK(cudaStreamSynchronize(s2));
    const double c_only = since(t0);
    // Serial: restore every layer, then run the model.
    CB(cublasSetStream(hd, s1));
    t0 = Clock::now();
    OK(dec.decode(dcal, views, bo, s1));
    for (int l = 0; l < L; ++l) restore_layer(dec, dcal, store, l, s1);
    for (int l = 0; l < L; ++l) layer_forward(hd, model, l, store.layout(l, 0), store.layout(l, 1), store.tokens, n_new, s1);
    CK(cudaStreamSynchronize(s1));
    OK(dec.status());
    const double ser = since(t0);
    // Pipelined: layer l's compute waits only for layer l's event.
    CB(cublasSetStream(hd, s2));
    t0 = Clock::now();
    CK(cudaEventRecord(begin, s1));
    OK(dec.decode(dcal, views, bo, s1));
    for (int l = 0; l < L; ++l) {
      restore_layer(dec, dcal, store, l, s1);
      CK(cudaEventRecord(ready[size_t(l)], s1));
    }
    for (int l = 0; l < L; ++l) {
      CK(cudaStreamWaitEvent(s2, ready[size_t(l)], 0));
      CK(cudaEventRecord(start[size_t(l)], s2));
      layer_forward(hd, model, l, store.layout(l, 0), store.layout(l, 1), store.tokens, n_new, s2);
    }
    CK(cudaStreamSynchronize(s2));
    CK(cudaStreamSynchronize(s1));
    OK(dec.status());
    const double pip = since(t0);
    if (rep == 0) continue;  // warm-up
    restore_only.push_back(r_only);
    compute_only.push_back(c_only);
    serial.push_back(ser);
    pipe.push_back(pip);
    const double end_ms = ms_between(begin, ready[size_t(L - 1)]);
    restore_end.push_back(end_ms * 1e-3);
    first_start.push_back(ms_between(begin, start[0]) * 1e-3);
    int n = 0;
    for (int l = 0; l < L; ++l) n += ms_between(begin, start[size_t(l)]) < end_ms;
    early.push_back(n);
  }
  for (int l = 0; l < L; ++l) {
    cudaEventDestroy(ready[size_t(l)]);
    cudaEventDestroy(start[size_t(l)]);
  }
  cudaEventDestroy(begin);
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
  Times t;
  t.serial_s = median(serial);
  t.pipelined_s = median(pipe);
  t.restore_only_s = median(restore_only);
  t.compute_only_s = median(compute_only);
  t.first_start_s = median(first_start);
  t.restore_end_s = median(restore_end);
  std::sort(early.begin(), early.end());
  t.started_before_restore_end = early[early.size() / 2];
  return t;
}

}  // namespace
}  // namespace kvtc::bench

int main(int argc, char** argv) {
  using namespace kvtc;
  using namespace kvtc::bench;
  std::string why;
  if (!cuda_device_available(&why)) {
    std::printf("SKIPPED: %s\n", why.c_str());
    return 0;
  }
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 8192;
  std::vector<int> news;
  {
    std::stringstream ss(argc > 2 ? argv[2] : "1,16");
    std::string item;
    while (std::getline(ss, item, ',')) news.push_back(std::atoi(item.c_str()));
  }
  const int max_new = *std::max_element(news.begin(), news.end());
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const Dims nemo{"nemo 40x8x128", 40, 5120, 32, 8, 14336};
  std::printf("{\"device\":\"%s\",\"tokens\":%lld,\"model\":\"%s\"}\n", prop.name, (long long)tokens, nemo.name);
  const std::vector<double> spectrum = reference_key_spectrum();
  const Workload w = make_workload(nemo.name, nemo.layers, nemo.kv_heads, kHeadDim, tokens, &spectrum, 2);
  const auto cal_data = std::make_shared<CalibrationData>(w.cal);
  EncodeOptions eo;
  eo.target_ratio = 20.0;
  eo.measure_error = false;
  const auto t_enc = Clock::now();
  auto enc = make_cpu_backend()->encode(*cal_data, w.cache, eo, nullptr);
  OK(enc.status());
  std::fprintf(stderr, "CPU encode %.1f s, %zu bytes\n", since(t_enc), enc->bytes.size());
  // The compressed cache waits in pinned host memory, as a serving system's host tier keeps it.
  CK(cudaHostRegister(enc->bytes.data(), enc->bytes.size(), cudaHostRegisterDefault));
  const std::vector<cuda::ContainerView> views{{enc->bytes.data(), enc->bytes.size()}};
  cuda::DeviceCalibration::Options dopt;
  dopt.fp32 = false;
  dopt.fp8 = true;
  auto dcal = cuda::DeviceCalibration::upload(Calibration(cal_data), dopt, nullptr);
  OK(dcal.status());
  Model model = make_model(nemo, max_new);
  cublasHandle_t hd;
  CB(cublasCreate(&hd));
  cuda::BatchDecoder dec;
  const double raw_bytes = double(tokens) * w.cache.shape.n_features() * 2 * 2;
  std::printf("%-40s %9s %9s %9s %9s %9s %9s %12s\n", "case (ms)", "restore", "model", "serial", "piped", "hidden",
              "L0 start", "layers early");
  for (bool paged : {false, true}) {
    const KvStore store = make_store(paged, nemo.layers, nemo.kv_heads, tokens);
    for (bool fp8 : {false, true})
      for (int n_new : news) {
        const Times t = run_case(model, hd, dec, *dcal, views, store, fp8, n_new, 5);
        const std::string name = std::string(paged ? "paged" : "contiguous") + (fp8 ? " fp8" : " bf16") + ", " +
                                 std::to_string(n_new) + " new token" + (n_new > 1 ? "s" : "");
        std::printf("{\"case\":\"%s\",\"file_ratio\":%.2f,\"restore_only_s\":%.6f,\"model_only_s\":%.6f,\"serial_s\":%.6f,"
                    "\"pipelined_s\":%.6f,\"layer0_start_s\":%.6f,\"restore_end_s\":%.6f,\"layers_started_before_restore_end\":%d}\n",
                    name.c_str(), raw_bytes / double(enc->bytes.size()), t.restore_only_s, t.compute_only_s, t.serial_s,
                    t.pipelined_s, t.first_start_s, t.restore_end_s, t.started_before_restore_end);
        std::printf("%-40s %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9d/%d\n", name.c_str(), t.restore_only_s * 1e3,
                    t.compute_only_s * 1e3, t.serial_s * 1e3, t.pipelined_s * 1e3, (t.serial_s - t.pipelined_s) * 1e3,
                    t.first_start_s * 1e3, t.started_before_restore_end, nemo.layers);
        std::fflush(stdout);
      }
  }
  cublasDestroy(hd);
  cudaHostUnregister(enc->bytes.data());
  return 0;
}
