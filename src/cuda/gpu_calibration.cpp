// GpuCalibration (cuda/gpu_decoder.hpp): a calibration's means, bases (fp32, bf16, FP8 with per-row
// scales) and RoPE frequencies uploaded once for every decode that uses it.
#include <vector>

#include "cuda/fp8_convert.cuh"
#include "cuda/gpu_decoder.hpp"
#include "util/half.hpp"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

Status GpuCalibration::upload(const CalibrationData& cal, bool f32, bool bf16, int64_t max_rows, cudaStream_t stream) {
  shape = cal.shape;
  fingerprint = cal.fingerprint;
  ecsq_levels = std::make_shared<EcsqLevelCache>();
  has_f32 = f32;
  has_bf16 = bf16;
  const int64_t p = cal.shape.n_features();
  for (int s = 0; s < 2; ++s) {
    const PcaBasis& pca = s == 0 ? cal.key.pca : cal.value.pca;
    if (int64_t(pca.mean.size()) != p || int64_t(pca.components.size()) != pca.rank * p)
      return invalid_argument("calibration basis has the wrong size");
    rank[s] = pca.rank;
    rows[s] = max_rows < 0 ? pca.rank : std::min(max_rows, pca.rank);
    KVTC_RETURN_IF_ERROR(upload_vector(mean[s], pca.mean, stream));
    const size_t n = size_t(rows[s] * p);
    if (f32) {
      KVTC_RETURN_IF_ERROR(basis_f32[s].reserve(n * sizeof(float)));
      KVTC_CUDA_RETURN(cudaMemcpyAsync(basis_f32[s].get(), pca.components.data(), n * sizeof(float),
                                       cudaMemcpyHostToDevice, stream));
    }
    if (bf16) {
      std::vector<uint16_t> h(n);
      for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(pca.components[i]);
      KVTC_RETURN_IF_ERROR(upload_vector(basis_bf16[s], h, stream));
      KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));  // h is freed on return
    }
  }
  KVTC_RETURN_IF_ERROR(upload_vector(inv_freq, cal.shape.rope.inv_freq(cal.shape.head_dim), stream));
  KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));
  has_fp8 = false;
  return Status::ok();
}

Status GpuCalibration::upload_fp8(const CalibrationData& cal, cudaStream_t stream) {
  if (cal.fingerprint != fingerprint) return invalid_argument("upload_fp8 needs the calibration upload() was given");
  const int64_t p = shape.n_features();
  for (int s = 0; s < 2; ++s) {
    const PcaBasis& pca = s == 0 ? cal.key.pca : cal.value.pca;
    rows_fp8[s] = fp8_padded(rows[s]);
    DeviceBuffer staged;  // the fp32 rows, where upload() kept none
    const float* src = basis_f32[s].as<float>();
    if (!has_f32) {
      KVTC_RETURN_IF_ERROR(staged.reserve(size_t(rows[s] * p) * sizeof(float)));
      KVTC_CUDA_RETURN(cudaMemcpyAsync(staged.get(), pca.components.data(), size_t(rows[s] * p) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream));
      src = staged.as<float>();
    }
    KVTC_RETURN_IF_ERROR(basis_fp8[s].reserve(size_t(p * rows_fp8[s])));
    KVTC_RETURN_IF_ERROR(fp8_scale[s].reserve(kFp8ScaleFloats * sizeof(float)));
    KVTC_CUDA_RETURN(cudaMemsetAsync(fp8_scale[s].get(), 0, kFp8ScaleFloats * sizeof(float), stream));
    Fp8Source fs;  // the basis is [rows][p]: the copy is its transpose, [p][rows_fp8]
    fs.data = src;
    fs.transposed = true;
    fs.ld = p;
    fs.rows = p;
    fs.components = rows[s];
    KVTC_CUDA_RETURN(launch_abs_max(fs, fp8_scale[s].as<float>(), stream));
    KVTC_CUDA_RETURN(launch_to_e4m3(fs, fp8_scale[s].as<float>(), basis_fp8[s].as<uint8_t>(), rows_fp8[s], stream));
    KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));  // staged is freed on return
  }
  has_fp8 = true;
  return Status::ok();
}

}  // namespace kvtc::cuda
