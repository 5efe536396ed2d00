// The public GPU API (kvtc/kvtc_cuda.hpp) over the internal batch decoder.
#include "kvtc/kvtc_cuda.hpp"

#include "core/calibration_data.hpp"
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
  return DeviceCalibration(std::move(impl));
}

size_t DeviceCalibration::device_bytes() const {
  const GpuCalibration& g = impl_->gcal;
  size_t n = g.inv_freq.size_bytes();
  for (int s = 0; s < 2; ++s) n += g.mean[s].size_bytes() + g.basis_f32[s].size_bytes() + g.basis_bf16[s].size_bytes();
  return n;
}

const Calibration& DeviceCalibration::calibration() const { return impl_->cal; }

struct BatchDecoder::Impl {
  GpuBatchDecoder dec;
  GpuDecodeTimes times;
};

BatchDecoder::BatchDecoder() : impl_(std::make_unique<Impl>()) {}
BatchDecoder::~BatchDecoder() = default;
BatchDecoder::BatchDecoder(BatchDecoder&&) noexcept = default;
BatchDecoder& BatchDecoder::operator=(BatchDecoder&&) noexcept = default;

Status BatchDecoder::decode(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                            const BatchDecodeOptions& options, void* cuda_stream) {
  std::string why;
  if (!device_available(&why)) return Status(StatusCode::kCuda, why);
  if (!options.keep_fp32 && !options.keep_bf16) return invalid_argument("keep fp32 or bf16 coefficients (or both)");
  return impl_->dec.decode(dcal.impl().gcal, dcal.calibration().data(), containers, options.verify_checksums,
                           options.keep_fp32, options.keep_bf16, options.overlap_exact,
                           static_cast<cudaStream_t>(cuda_stream), &impl_->times);
}

Status BatchDecoder::exact_status() { return impl_->dec.exact_status(&impl_->times); }

int BatchDecoder::n_sequences() const { return impl_->dec.n_sequences(); }
ModelShape BatchDecoder::shape(int seq) const { return impl_->dec.sequence(seq).container.header.shape; }
int64_t BatchDecoder::n_tokens(int seq) const { return int64_t(impl_->dec.sequence(seq).container.header.n_tokens); }

BatchDecodeTimes BatchDecoder::last_times() const {
  const GpuDecodeTimes& t = impl_->times;
  return {t.upload_s, t.inflate_s, t.dequantize_s, t.exact_s, t.total_s};
}

Status BatchDecoder::restore_layer(const DeviceCalibration& dcal, int seq, int layer, void* k_dev, void* v_dev,
                                   ElementType type, void* cuda_stream) {
  return impl_->dec.restore_layer(dcal.impl().gcal, seq, layer, k_dev, v_dev,
                                  type == ElementType::kBF16 ? OutType::kBF16 : OutType::kF32,
                                  static_cast<cudaStream_t>(cuda_stream));
}

Status BatchDecoder::restore_all(const DeviceCalibration& dcal, int seq, void* const* k_layers, void* const* v_layers,
                                 ElementType type, void* cuda_stream, void* const* layer_events) {
  if (seq < 0 || seq >= n_sequences()) return invalid_argument("sequence index out of range");
  const int n_layers = impl_->dec.sequence(seq).container.header.shape.n_layers;
  for (int l = 0; l < n_layers; ++l) {
    KVTC_RETURN_IF_ERROR(restore_layer(dcal, seq, l, k_layers[l], v_layers[l], type, cuda_stream));
    if (layer_events && layer_events[l])
      KVTC_CUDA_RETURN(cudaEventRecord(static_cast<cudaEvent_t>(layer_events[l]), static_cast<cudaStream_t>(cuda_stream)));
  }
  return Status::ok();
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
