#include "cuda/cuda_backend.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>

#include "cuda/gpu_decoder.hpp"
#include "cuda/gpu_encoder.hpp"
#include "entropy/inflate.cuh"
#include "kvtc/kvtc_cuda.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace cuda {

bool device_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = std::string("no CUDA device: ") + cudaGetErrorString(e);
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device: cudaGetDeviceCount found none";
    return false;
  }
  return true;
}

void* allocate_pinned(size_t size_bytes) {
  void* p = nullptr;
  if (cudaMallocHost(&p, size_bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return p;
}

void free_pinned(void* data, size_t /*size_bytes*/) {
  if (data != nullptr) (void)cudaFreeHost(data);
}

}  // namespace cuda

bool cuda_device_available(std::string* why) { return cuda::device_available(why); }

Status cuda_inflate_streams(const std::vector<std::vector<uint8_t>>& streams, const std::vector<uint32_t>& raw_bytes,
                            const std::vector<uint32_t>& crc32, std::vector<std::vector<uint8_t>>* out,
                            std::vector<uint32_t>* status, double* kernel_seconds) {
  const size_t n = streams.size();
  if (raw_bytes.size() != n || (!crc32.empty() && crc32.size() != n)) return invalid_argument("one size per stream");
  std::string why;
  if (!cuda::device_available(&why)) return Status(StatusCode::kCuda, why);
  std::vector<uint64_t> src_off(n), dst_off(n);
  uint64_t src_total = 0, dst_total = 0;
  for (size_t i = 0; i < n; ++i) {
    src_off[i] = src_total;
    src_total += streams[i].size();
    dst_off[i] = dst_total;
    dst_total += raw_bytes[i];
  }
  cuda::DeviceBuffer src, dst, jobs, st;
  KVTC_RETURN_IF_ERROR(src.reserve(src_total + 1));
  KVTC_RETURN_IF_ERROR(dst.reserve(dst_total + 1));
  KVTC_RETURN_IF_ERROR(jobs.reserve(sizeof(cuda::InflateJob) * (n + 1)));
  KVTC_RETURN_IF_ERROR(st.reserve(sizeof(uint32_t) * (n + 1)));
  std::vector<uint8_t> src_host(src_total);
  std::vector<cuda::InflateJob> job_host(n);
  for (size_t i = 0; i < n; ++i) {
    if (!streams[i].empty()) std::memcpy(src_host.data() + src_off[i], streams[i].data(), streams[i].size());
    cuda::InflateJob& j = job_host[i];
    j.src = src.as<uint8_t>() + src_off[i];
    j.dst = dst.as<uint8_t>() + dst_off[i];
    j.src_bytes = uint32_t(streams[i].size());
    j.dst_bytes = raw_bytes[i];
    j.crc32 = crc32.empty() ? 0 : crc32[i];
  }
  KVTC_CUDA_RETURN(cudaMemcpy(src.get(), src_host.data(), src_total, cudaMemcpyHostToDevice));
  KVTC_CUDA_RETURN(cudaMemcpy(jobs.get(), job_host.data(), sizeof(cuda::InflateJob) * n, cudaMemcpyHostToDevice));
  KVTC_CUDA_RETURN(cudaMemset(st.get(), 0xff, sizeof(uint32_t) * n));
  KVTC_CUDA_RETURN(cudaMemset(dst.get(), 0xa5, dst_total + 1));  // poison: unwritten bytes show
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0, nullptr);
  const cudaError_t launched = cuda::launch_inflate(jobs.as<cuda::InflateJob>(), int(n), !crc32.empty(), st.as<uint32_t>(), nullptr);
  cudaEventRecord(e1, nullptr);
  const cudaError_t synced = cudaDeviceSynchronize();
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  KVTC_CUDA_RETURN(launched);
  KVTC_CUDA_RETURN(synced);
  if (kernel_seconds) *kernel_seconds = ms * 1e-3;
  status->assign(n, 0);
  KVTC_CUDA_RETURN(cudaMemcpy(status->data(), st.get(), sizeof(uint32_t) * n, cudaMemcpyDeviceToHost));
  std::vector<uint8_t> dst_host(dst_total);
  KVTC_CUDA_RETURN(cudaMemcpy(dst_host.data(), dst.get(), dst_total, cudaMemcpyDeviceToHost));
  out->assign(n, {});
  for (size_t i = 0; i < n; ++i)
    (*out)[i].assign(dst_host.begin() + int64_t(dst_off[i]), dst_host.begin() + int64_t(dst_off[i] + raw_bytes[i]));
  return Status::ok();
}

namespace {

using Clock = std::chrono::steady_clock;

class CudaBackend final : public Backend {
 public:
  ~CudaBackend() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  const char* name() const override { return "cuda"; }

  Result<EncodedCache> encode(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& options,
                              StageTimes* times) override {
    return encode_with_probe(cal, cache, options, times, nullptr);
  }

  Result<EncodedCache> encode_with_probe(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& options,
                                         StageTimes* times, CudaEncodeProbe* probe) {
    std::lock_guard<std::mutex> lock(mu_);
    KVTC_RETURN_IF_ERROR(cuda::GpuEncoder::check_inputs(cal, cache, options));  // before any upload
    KVTC_RETURN_IF_ERROR(ensure(cal));
    CudaEncodeProbe local;
    if (probe == nullptr) probe = &local;
    EncodedCache out;
    KVTC_RETURN_IF_ERROR(encoder_.encode(gcal_, cal, cache, options, stream_, &out, probe));
    if (times) {
      times->gather_s += probe->upload_s + probe->gather_s;
      times->transform_s += probe->gemm_s;
      times->quantize_s += probe->quantize_s + probe->pack_s;  // exact byte planes are packed here too
      times->deflate_s += probe->deflate_s + probe->d2h_s;
      times->total_s += probe->total_s;
    }
    return out;
  }

  Result<DecodedCoefficients> decode_coefficients(const CalibrationData& cal, const uint8_t* bytes, size_t size_bytes,
                                                  const DecodeOptions& options, StageTimes* times) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto start = Clock::now();
    KVTC_RETURN_IF_ERROR(ensure(cal));
    cuda::GpuDecodeTimes gt;
    KVTC_RETURN_IF_ERROR(decoder_.decode(gcal_, cal, {{bytes, size_bytes}}, options.verify_checksums, true, false,
                                         false, stream_, &gt));
    const cuda::GpuSequence& seq = decoder_.sequence(0);
    DecodedCoefficients dec;
    dec.container = seq.container;
    const ContainerHeader& h = dec.container.header;
    const size_t m = size_t(h.n_compressed_tokens());
    std::vector<float> by_component[2];  // [n_kept][M] from the device, [M][n_kept] after the transpose below
    for (int s = 0; s < 2; ++s) {
      dec.coef[s].resize(m * size_t(seq.n_kept[s]));
      std::vector<float>& to = seq.coef_by_component[s] ? by_component[s] : dec.coef[s];
      to.resize(dec.coef[s].size());
      if (!to.empty())
        KVTC_CUDA_RETURN(cudaMemcpyAsync(to.data(), seq.coef_f32[s].get(), to.size() * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream_));
      for (int seg = 0; seg < 2; ++seg) {
        dec.exact[s][seg].assign(size_t(h.shape.n_layers), {});
        const int64_t n = seg == 0 ? h.n_head_exact : h.n_tail_exact;
        for (int l = 0; l < h.shape.n_layers; ++l) {
          const int64_t off = seq.exact_offset[s][seg][size_t(l)];
          if (off < 0) continue;
          auto& v = dec.exact[s][seg][size_t(l)];
          v.resize(size_t(int64_t(h.shape.n_kv_heads) * n * h.shape.head_dim));
          KVTC_CUDA_RETURN(cudaMemcpyAsync(v.data(), seq.exact.as<float>() + off, v.size() * sizeof(float),
                                           cudaMemcpyDeviceToHost, stream_));
        }
      }
    }
    KVTC_CUDA_RETURN(cudaStreamSynchronize(stream_));
    for (int s = 0; s < 2; ++s) {
      const size_t kept = size_t(seq.n_kept[s]);
      for (size_t j = 0; j < by_component[s].size() / std::max<size_t>(m, 1); ++j)
        for (size_t t = 0; t < m; ++t) dec.coef[s][t * kept + j] = by_component[s][j * m + t];
    }
    key_ = {dec.coef[0].data(), dec.coef[1].data()};
    if (times) {
      times->deflate_s += gt.inflate_s;
      times->quantize_s += gt.dequantize_s;
      times->exact_s += gt.exact_s;
      times->total_s += std::chrono::duration<double>(Clock::now() - start).count();
    }
    return dec;
  }

  Status restore_layer(const CalibrationData& cal, const DecodedCoefficients& dec, int layer, float* k, float* v,
                       int n_threads, StageTimes* times) const override {
    (void)n_threads;
    std::lock_guard<std::mutex> lock(mu_);
    const auto start = Clock::now();
    KVTC_RETURN_IF_ERROR(ensure(cal));
    // The device holds the last decode_coefficients result; anything else is uploaded first.
    if (decoder_.n_sequences() != 1 || key_.first == nullptr || key_.first != dec.coef[0].data() || key_.second != dec.coef[1].data() ||
        !decoder_.sequence(0).coef_f32[0].get()) {
      KVTC_RETURN_IF_ERROR(decoder_.load_host(gcal_, dec, stream_));
      key_ = {dec.coef[0].data(), dec.coef[1].data()};
    }
    const ContainerHeader& h = dec.container.header;
    const size_t n = size_t(h.shape.n_kv_heads) * size_t(h.n_tokens) * size_t(h.shape.head_dim);
    KVTC_RETURN_IF_ERROR(out_.reserve(2 * n * sizeof(float)));
    float* kd = out_.as<float>();
    float* vd = kd + n;
    KVTC_RETURN_IF_ERROR(decoder_.restore_layer(gcal_, 0, layer, kd, vd, cuda::OutType::kF32, stream_));
    KVTC_CUDA_RETURN(cudaMemcpyAsync(k, kd, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    KVTC_CUDA_RETURN(cudaMemcpyAsync(v, vd, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    KVTC_CUDA_RETURN(cudaStreamSynchronize(stream_));
    if (times) times->transform_s += std::chrono::duration<double>(Clock::now() - start).count();
    return Status::ok();
  }

 private:
  // Device, stream and the calibration on the device (uploaded again when another one comes).
  Status ensure(const CalibrationData& cal) const {
    std::string why;
    if (!cuda::device_available(&why)) return Status(StatusCode::kCuda, why);
    if (!stream_) KVTC_CUDA_RETURN(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (cal_ != &cal || gcal_.fingerprint != cal.fingerprint || !gcal_.has_f32) {
      KVTC_RETURN_IF_ERROR(gcal_.upload(cal, true, false, -1, stream_));
      cal_ = &cal;
      key_ = {nullptr, nullptr};
    }
    return Status::ok();
  }

  mutable std::mutex mu_;
  mutable cudaStream_t stream_ = nullptr;
  mutable const CalibrationData* cal_ = nullptr;
  mutable cuda::GpuCalibration gcal_;
  mutable cuda::GpuBatchDecoder decoder_;
  cuda::GpuEncoder encoder_;
  mutable std::pair<const float*, const float*> key_{nullptr, nullptr};
  mutable cuda::DeviceBuffer out_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

Result<EncodedCache> cuda_encode_probe(Backend& cuda_backend, const CalibrationData& cal, const KVCache& cache,
                                       const EncodeOptions& options, CudaEncodeProbe* probe) {
  auto* backend = dynamic_cast<CudaBackend*>(&cuda_backend);
  if (backend == nullptr) return invalid_argument("cuda_encode_probe needs a backend from make_cuda_backend()");
  return backend->encode_with_probe(cal, cache, options, nullptr, probe);
}

}  // namespace kvtc
