// The public GPU API (kvtc/kvtc_cuda.hpp) over the internal batch decoder.
#include "kvtc/kvtc_cuda.hpp"

#include <algorithm>
#include <chrono>

#include "core/calibration_data.hpp"
#include "cpu/cpu_backend.hpp"
#include "cuda/batch_encoder.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/gpu_decoder.hpp"
#include "util/status_macros.hpp"

#include <cstring>

namespace kvtc::cuda {

bool device_available(std::string* why);  // cuda_backend.cpp

struct DeviceCalibration::Impl {
  Calibration cal;
  GpuCalibration gcal;
  explicit Impl(Calibration c) : cal(std::move(c)) {}
};

DeviceCalibration::DeviceCalibration(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceCalibration::~DeviceCalibration() = default;
DeviceCalibration::DeviceCalibration(DeviceCalibration&&) noexcept = default;
DeviceCalibration& DeviceCalibration::operator=(DeviceCalibration&&) noexcept = default;

Result<DeviceCalibration> DeviceCalibration::upload(const Calibration& cal, const Options& options, void* cuda_stream) {
  std::string why;
  if (!device_available(&why)) return Status(StatusCode::kCuda, why);
  auto impl = std::make_unique<Impl>(cal);
  KVTC_RETURN_IF_ERROR(impl->gcal.upload(cal.data(), options.fp32, options.bf16, options.max_rows,
                                         static_cast<cudaStream_t>(cuda_stream)));
  if (options.fp8) KVTC_RETURN_IF_ERROR(impl->gcal.upload_fp8(cal.data(), static_cast<cudaStream_t>(cuda_stream)));
  return DeviceCalibration(std::move(impl));
}

size_t DeviceCalibration::device_bytes() const {
  const GpuCalibration& g = impl_->gcal;
  size_t n = g.inv_freq.size_bytes();
  for (int s = 0; s < 2; ++s)
    n += g.mean[s].size_bytes() + g.basis_f32[s].size_bytes() + g.basis_bf16[s].size_bytes() +
         g.basis_fp8[s].size_bytes() + g.fp8_scale[s].size_bytes();
  return n;
}

const Calibration& DeviceCalibration::calibration() const { return impl_->cal; }

struct BatchDecoder::Impl {
  GpuBatchDecoder dec;
  GpuDecodeTimes times;
};

namespace {
GpuDecodeOptions gpu_options(const BatchDecodeOptions& o) {
  GpuDecodeOptions g;
  g.verify_checksums = o.verify_checksums;
  g.want_f32 = o.keep_fp32;
  g.want_bf16 = o.keep_bf16;
  g.overlap_exact = o.overlap_exact;
  g.defer_status = o.defer_status;
  g.want_fp8 = o.fp8_reconstruction;
  g.layers_per_gemm = o.layers_per_gemm;
  g.fp8_fast_accum = o.fp8_fast_accum;
  return g;
}
}  // namespace

BatchDecoder::BatchDecoder() : impl_(std::make_unique<Impl>()) {}
BatchDecoder::~BatchDecoder() = default;
BatchDecoder::BatchDecoder(BatchDecoder&&) noexcept = default;
BatchDecoder& BatchDecoder::operator=(BatchDecoder&&) noexcept = default;

Status BatchDecoder::decode(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                            const BatchDecodeOptions& options, void* cuda_stream) {
  std::string why;
  if (!device_available(&why)) return Status(StatusCode::kCuda, why);
  if (!options.keep_fp32 && !options.keep_bf16) return invalid_argument("keep fp32 or bf16 coefficients (or both)");
  if (options.fp8_reconstruction && !dcal.impl().gcal.has_fp8)
    return invalid_argument("fp8_reconstruction needs a DeviceCalibration uploaded with Options::fp8");
  return impl_->dec.decode(dcal.impl().gcal, dcal.calibration().data(), containers, gpu_options(options),
                           static_cast<cudaStream_t>(cuda_stream), &impl_->times);
}

Status BatchDecoder::exact_status() { return impl_->dec.exact_status(&impl_->times); }

Status BatchDecoder::status() { return impl_->dec.status(&impl_->times); }

Result<size_t> BatchDecoder::workspace_bytes(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                                             const BatchDecodeOptions& options) {
  if (!options.keep_fp32 && !options.keep_bf16) return invalid_argument("keep fp32 or bf16 coefficients (or both)");
  if (options.fp8_reconstruction && !dcal.impl().gcal.has_fp8)
    return invalid_argument("fp8_reconstruction needs a DeviceCalibration uploaded with Options::fp8");
  return GpuBatchDecoder::workspace_bytes(dcal.impl().gcal, dcal.calibration().data(), containers, gpu_options(options));
}

Status BatchDecoder::set_workspace(void* workspace_dev, size_t bytes) { return impl_->dec.set_workspace(workspace_dev, bytes); }

Result<KVCache> decode_on_gpu(const Calibration& cal, const uint8_t* bytes, size_t size_bytes, int first_layer,
                              int last_layer, const DecodeOptions& options) {
  auto backend = make_cuda_backend();
  KVTC_ASSIGN_OR_RETURN(DecodedCoefficients dec,
                        backend->decode_coefficients(cal.data(), bytes, size_bytes, options, nullptr));
  const ContainerHeader& h = dec.container.header;
  if (last_layer < 0) last_layer = h.shape.n_layers;
  if (first_layer < 0 || last_layer > h.shape.n_layers || first_layer >= last_layer)
    return invalid_argument("layer range out of bounds");
  KVCache out = cache_skeleton(h);
  const size_t n = size_t(h.shape.n_kv_heads) * size_t(h.n_tokens) * size_t(h.shape.head_dim);
  out.k.assign(size_t(last_layer - first_layer), std::vector<float>(n));
  out.v.assign(size_t(last_layer - first_layer), std::vector<float>(n));
  for (int l = first_layer; l < last_layer; ++l)
    KVTC_RETURN_IF_ERROR(backend->restore_layer(cal.data(), dec, l, out.k[size_t(l - first_layer)].data(),
                                                out.v[size_t(l - first_layer)].data(), options.n_threads, nullptr));
  return out;
}

Result<EncodedCache> encode_on_gpu(const Calibration& cal, const KVCache& cache, const EncodeOptions& options,
                                   EncodeProjection projection) {
  if (projection == EncodeProjection::kBf16)
    return unsupported("encode_on_gpu: the bf16 projection is BatchEncoder's (device-resident caches); use kFp32 or kTf32");
  auto backend = make_cuda_backend();
  CudaEncodeProbe probe;
  probe.tf32 = projection == EncodeProjection::kTf32;
  KVTC_ASSIGN_OR_RETURN(EncodedCache out, cuda_encode_probe(*backend, cal.data(), cache, options, &probe));
  if (!options.measure_error) return out;
  // The report's errors, as kvtc::encode measures them, from a restore on the same device.
  DecodeOptions dopt;
  dopt.n_threads = options.n_threads;
  KVTC_ASSIGN_OR_RETURN(DecodedCoefficients dec,
                        backend->decode_coefficients(cal.data(), out.bytes.data(), out.bytes.size(), dopt, nullptr));
  KVCache restored = cache_skeleton(dec.container.header);
  const size_t n = size_t(cache.shape.n_kv_heads) * size_t(cache.n_tokens) * size_t(cache.shape.head_dim);
  for (int l = 0; l < cache.shape.n_layers; ++l) {
    restored.k[size_t(l)].resize(n);
    restored.v[size_t(l)].resize(n);
    KVTC_RETURN_IF_ERROR(backend->restore_layer(cal.data(), dec, l, restored.k[size_t(l)].data(),
                                                restored.v[size_t(l)].data(), options.n_threads, nullptr));
  }
  const int64_t t0 = dec.container.header.n_head_exact;
  out.report.layers = measure_layer_errors(cache, restored, t0, t0 + out.report.n_compressed_tokens,
                                           &out.report.k_relative_mse, &out.report.v_relative_mse);
  return out;
}

struct BatchEncoder::Impl {
  GpuBatchEncoder enc;
};

BatchEncoder::BatchEncoder() : impl_(std::make_unique<Impl>()) {}
BatchEncoder::~BatchEncoder() = default;
BatchEncoder::BatchEncoder(BatchEncoder&&) noexcept = default;
BatchEncoder& BatchEncoder::operator=(BatchEncoder&&) noexcept = default;

Result<size_t> BatchEncoder::workspace_bytes(const DeviceCalibration& dcal, const std::vector<DeviceCacheView>& views,
                                             const EncodeOptions& options) {
  return GpuBatchEncoder::workspace_bytes(dcal.impl().gcal, dcal.calibration().data(), views, options);
}

Result<std::vector<uint64_t>> BatchEncoder::container_bound_bytes(const DeviceCalibration& dcal,
                                                                  const std::vector<DeviceCacheView>& views,
                                                                  const EncodeOptions& options) {
  return GpuBatchEncoder::container_bound_bytes(dcal.impl().gcal, dcal.calibration().data(), views, options);
}

Status BatchEncoder::set_workspace(void* workspace_dev, size_t bytes) {
  return impl_->enc.set_workspace(workspace_dev, bytes);
}

void BatchEncoder::set_projection(EncodeProjection projection) { impl_->enc.set_projection(projection); }

Status BatchEncoder::encode(const DeviceCalibration& dcal, const std::vector<DeviceCacheView>& views,
                            const EncodeOptions& options, uint8_t* out_dev, const std::vector<uint64_t>& out_offsets,
                            uint64_t* sizes_dev, void* cuda_stream) {
  return impl_->enc.encode(dcal.impl().gcal, dcal.calibration().data(), views, options, out_dev, out_offsets, sizes_dev,
                           static_cast<cudaStream_t>(cuda_stream));
}

Status BatchEncoder::status() { return impl_->enc.status(); }

BatchEncodeTimes BatchEncoder::last_times() const { return impl_->enc.last_times(); }

Result<RestoreTiming> time_restore(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                                   int repeat, ElementType type, const BatchDecodeOptions& options) {
  using Clock = std::chrono::steady_clock;
  if (repeat < 1 || containers.empty()) return invalid_argument("need at least one container and one repetition");
  const bool fp32 = type == ElementType::kF32;
  if (fp32 ? !options.keep_fp32 : !options.keep_bf16)
    return invalid_argument(std::string("timing ") + (fp32 ? "fp32" : "bf16") + " restores needs keep_" +
                            (fp32 ? "fp32" : "bf16") + " in the decode options");
  BatchDecoder dec;
  cudaStream_t stream;
  KVTC_CUDA_RETURN(cudaStreamCreate(&stream));
  // Output buffers per sequence and layer, and one event per layer.
  KVTC_RETURN_IF_ERROR(dec.decode(dcal, containers, options, stream));
  KVTC_RETURN_IF_ERROR(dec.exact_status());
  const size_t eb = fp32 ? 4 : 2;
  size_t total = 0, max_layers = 0;
  RestoreTiming r;
  r.repeat = repeat;
  for (int q = 0; q < dec.n_sequences(); ++q) {
    const ModelShape sh = dec.shape(q);
    total += size_t(2) * sh.n_layers * sh.n_kv_heads * size_t(dec.n_tokens(q)) * sh.head_dim;
    max_layers = std::max(max_layers, size_t(sh.n_layers));
    r.raw_bytes += double(2) * sh.n_layers * sh.n_kv_heads * double(dec.n_tokens(q)) * sh.head_dim * 2;
    r.file_bytes += double(containers[size_t(q)].second);
  }
  DeviceBuffer out;
  KVTC_RETURN_IF_ERROR(out.reserve(total * eb));
  std::vector<std::vector<void*>> kp(size_t(dec.n_sequences())), vp(size_t(dec.n_sequences()));
  size_t off = 0;
  for (int q = 0; q < dec.n_sequences(); ++q) {
    const ModelShape sh = dec.shape(q);
    const size_t layer = size_t(sh.n_kv_heads) * size_t(dec.n_tokens(q)) * sh.head_dim * eb;
    for (int l = 0; l < sh.n_layers; ++l) {
      kp[size_t(q)].push_back(out.as<uint8_t>() + off);
      off += layer;
      vp[size_t(q)].push_back(out.as<uint8_t>() + off);
      off += layer;
    }
  }
  std::vector<void*> events(max_layers, nullptr);
  for (auto& e : events) {
    cudaEvent_t x;
    KVTC_CUDA_RETURN(cudaEventCreate(&x));
    e = x;
  }
  cudaEvent_t start;
  KVTC_CUDA_RETURN(cudaEventCreate(&start));
  std::vector<double> v[10];
  Status st = Status::ok();
  for (int rep = 0; rep <= repeat && st.is_ok(); ++rep) {
    const auto w0 = Clock::now();
    st = dec.decode(dcal, containers, options, stream);
    const double decode_wall = std::chrono::duration<double>(Clock::now() - w0).count();
    if (st.is_ok()) st = cuda_status(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int q = 0; q < dec.n_sequences() && st.is_ok(); ++q)
      st = dec.restore_all(dcal, q, kp[size_t(q)].data(), vp[size_t(q)].data(),
                           type, stream, q == 0 ? events.data() : nullptr);
    cudaEvent_t end;
    if (st.is_ok()) st = cuda_status(cudaEventCreate(&end), "cudaEventCreate");
    if (!st.is_ok()) break;
    cudaEventRecord(end, stream);
    st = cuda_status(cudaStreamSynchronize(stream), "restore");
    if (st.is_ok()) st = dec.exact_status();
    const double wall = std::chrono::duration<double>(Clock::now() - w0).count();
    float ms_all = 0, ms_first = 0;
    cudaEventElapsedTime(&ms_all, start, end);
    cudaEventElapsedTime(&ms_first, start, static_cast<cudaEvent_t>(events[0]));
    cudaEventDestroy(end);
    if (rep == 0 || !st.is_ok()) continue;
    const BatchDecodeTimes t = dec.last_times();
    const double vals[10] = {decode_wall, t.upload_s, t.inflate_s, t.dequantize_s, t.exact_s, ms_all * 1e-3,
                             ms_first * 1e-3, wall, t.host_s, t.fp8_s};
    for (int i = 0; i < 10; ++i) v[i].push_back(vals[i]);
  }
  for (void* e : events) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaEventDestroy(start);
  cudaStreamDestroy(stream);
  KVTC_RETURN_IF_ERROR(st);
  auto med = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  r.decode_wall_s = med(v[0]);
  r.upload_s = med(v[1]);
  r.inflate_s = med(v[2]);
  r.dequantize_s = med(v[3]);
  r.exact_s = med(v[4]);
  r.restore_s = med(v[5]);
  r.first_layer_s = med(v[6]);
  r.total_wall_s = med(v[7]);
  r.host_s = med(v[8]);
  r.fp8_s = med(v[9]);
  return r;
}

int BatchDecoder::n_sequences() const { return impl_->dec.n_sequences(); }
ModelShape BatchDecoder::shape(int seq) const { return impl_->dec.sequence(seq).container.header.shape; }
int64_t BatchDecoder::n_tokens(int seq) const { return int64_t(impl_->dec.sequence(seq).container.header.n_tokens); }

BatchDecodeTimes BatchDecoder::last_times() const {
  const GpuDecodeTimes& t = impl_->times;
  return {t.upload_s, t.inflate_s, t.dequantize_s, t.exact_s, t.total_s, t.host_s, t.wait_s, t.fp8_s};
}

Status BatchDecoder::restore_layer(const DeviceCalibration& dcal, int seq, int layer, void* k_dev, void* v_dev,
                                   ElementType type, void* cuda_stream) {
  return impl_->dec.restore_layer(dcal.impl().gcal, seq, layer, k_dev, v_dev,
                                  type == ElementType::kBF16 ? OutType::kBF16 : OutType::kF32,
                                  static_cast<cudaStream_t>(cuda_stream));
}

Status BatchDecoder::restore_layer_paged(const DeviceCalibration& dcal, int seq, int layer, void* layer_cache,
                                         const int32_t* block_table_dev, int block_size, ElementType type,
                                         void* cuda_stream) {
  return impl_->dec.restore_layer_paged(dcal.impl().gcal, seq, layer, layer_cache, block_table_dev, block_size,
                                        type == ElementType::kBF16 ? OutType::kBF16 : OutType::kF32,
                                        static_cast<cudaStream_t>(cuda_stream));
}

Status BatchDecoder::restore_all(const DeviceCalibration& dcal, int seq, void* const* k_layers, void* const* v_layers,
                                 ElementType type, void* cuda_stream, void* const* layer_events) {
  if (seq < 0 || seq >= n_sequences()) return invalid_argument("sequence index out of range");
  const int n_layers = impl_->dec.sequence(seq).container.header.shape.n_layers;
  std::vector<cudaEvent_t> events;
  if (layer_events)
    for (int l = 0; l < n_layers; ++l) events.push_back(static_cast<cudaEvent_t>(layer_events[l]));
  return impl_->dec.restore_layers(dcal.impl().gcal, seq, 0, n_layers, k_layers, v_layers,
                                   type == ElementType::kBF16 ? OutType::kBF16 : OutType::kF32,
                                   static_cast<cudaStream_t>(cuda_stream), layer_events ? events.data() : nullptr);
}

}  // namespace kvtc::cuda

namespace kvtc {

Status cuda_restore_all_to_host(cuda::BatchDecoder& dec, const cuda::DeviceCalibration& dcal, int seq,
                                cuda::ElementType type, std::vector<std::vector<float>>* k,
                                std::vector<std::vector<float>>* v) {
  if (seq < 0 || seq >= dec.n_sequences()) return invalid_argument("sequence index out of range");
  const ModelShape shape = dec.shape(seq);
  const size_t n = size_t(shape.n_kv_heads) * size_t(dec.n_tokens(seq)) * size_t(shape.head_dim);
  const size_t eb = type == cuda::ElementType::kF32 ? 4 : 2;
  const int L = shape.n_layers;
  cuda::DeviceBuffer buf;
  KVTC_RETURN_IF_ERROR(buf.reserve(2 * size_t(L) * n * eb));
  KVTC_CUDA_RETURN(cudaMemset(buf.get(), 0xff, 2 * size_t(L) * n * eb));  // NaN poison: unwritten shows
  std::vector<void*> kp(static_cast<size_t>(L)), vp(static_cast<size_t>(L)), ev(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    kp[size_t(l)] = buf.as<uint8_t>() + (2 * size_t(l)) * n * eb;
    vp[size_t(l)] = buf.as<uint8_t>() + (2 * size_t(l) + 1) * n * eb;
    cudaEvent_t e;
    KVTC_CUDA_RETURN(cudaEventCreate(&e));
    ev[size_t(l)] = e;
  }
  cudaStream_t stream;
  KVTC_CUDA_RETURN(cudaStreamCreate(&stream));
  Status st = dec.restore_all(dcal, seq, kp.data(), vp.data(), type, stream, ev.data());
  // Layer 0's event completes no later than the last layer's.
  if (st.is_ok()) st = cuda::cuda_status(cudaEventSynchronize(static_cast<cudaEvent_t>(ev[0])), "layer 0 event");
  if (st.is_ok()) st = cuda::cuda_status(cudaStreamSynchronize(stream), "restore_all");
  k->assign(size_t(L), std::vector<float>(n));
  v->assign(size_t(L), std::vector<float>(n));
  std::vector<uint8_t> host(n * eb);
  for (int l = 0; l < L && st.is_ok(); ++l)
    for (int s = 0; s < 2 && st.is_ok(); ++s) {
      st = cuda::cuda_status(cudaMemcpy(host.data(), s == 0 ? kp[size_t(l)] : vp[size_t(l)], n * eb, cudaMemcpyDeviceToHost),
                             "copy back");
      std::vector<float>& out = (s == 0 ? *k : *v)[size_t(l)];
      for (size_t i = 0; i < n; ++i) {
        if (eb == 4) {
          std::memcpy(&out[i], host.data() + 4 * i, 4);
        } else {
          uint16_t bits;
          std::memcpy(&bits, host.data() + 2 * i, 2);
          const uint32_t u = uint32_t(bits) << 16;
          std::memcpy(&out[i], &u, 4);
        }
      }
    }
  for (void* e : ev) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaStreamDestroy(stream);
  return st;
}

}  // namespace kvtc
