// The batched device-cache encoder (internal; the public face is kvtc::cuda::BatchEncoder in
// kvtc/kvtc_cuda.hpp). Per batch, on one stream and without host synchronisation:
//   host    check the views, plan each sequence (plan_encode: the same chunks as GpuEncoder), build
//           each header template (serialize_container_header with offsets, stored sizes and CRCs 0)
//           and one table blob with every job, carved out of the caller's workspace
//   upload  the blob, from pinned host memory
//   per sequence and stream: gather from the device layout (RoPE removed, mean subtracted) in slabs
//           -> cuBLAS fp32 SGEMM -> quantise; then that sequence's side, aligned and dense packs
//   exact   byte planes of the input's bits, one launch
//   DEFLATE every chunk (one launch); the dense gate; the dense alternatives (one launch)
//   assembly one block per sequence (cuda/container_assembly.cuh): container, size, status
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <vector>

#include "cuda/gpu_encoder.hpp"
#include "kvtc/kvtc_cuda.hpp"

namespace kvtc::cuda {

class GpuBatchEncoder {
 public:
  GpuBatchEncoder() = default;
  ~GpuBatchEncoder();
  GpuBatchEncoder(const GpuBatchEncoder&) = delete;
  GpuBatchEncoder& operator=(const GpuBatchEncoder&) = delete;

  static Result<size_t> workspace_bytes(const GpuCalibration& gcal, const CalibrationData& cal,
                                        const std::vector<DeviceCacheView>& views, const EncodeOptions& options);
  static Result<std::vector<uint64_t>> container_bound_bytes(const GpuCalibration& gcal, const CalibrationData& cal,
                                                             const std::vector<DeviceCacheView>& views,
                                                             const EncodeOptions& options);
  Status set_workspace(void* dev, size_t bytes);
  Status encode(const GpuCalibration& gcal, const CalibrationData& cal, const std::vector<DeviceCacheView>& views,
                const EncodeOptions& options, uint8_t* out_dev, const std::vector<uint64_t>& out_offsets,
                uint64_t* sizes_dev, cudaStream_t stream);
  Status status();
  // The last batch's stages (kvtc/kvtc_cuda.hpp); computed by status().
  BatchEncodeTimes last_times() const { return times_; }
  void set_projection(EncodeProjection projection) { projection_ = projection; }

 private:
  Status wait_previous();

  cublasHandle_t handle_ = nullptr;
  // kFp32 / kTf32: cuBLAS SGEMM in that math mode (as GpuEncoder's probe.tf32); kBf16: gather writes
  // bf16 rows and cublasGemmEx multiplies them with the calibration's bf16 basis, fp32 accumulation.
  EncodeProjection projection_ = EncodeProjection::kFp32;
  uint8_t* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  uint8_t* pinned_ = nullptr;  // the table blob, host side
  size_t pinned_bytes_ = 0;
  uint32_t* pinned_status_ = nullptr;
  size_t pinned_status_n_ = 0;
  cudaEvent_t done_ = nullptr;      // recorded after the last batch's work
  cudaEvent_t uploaded_ = nullptr;  // recorded after the last batch's table upload
  // Stage boundaries of the last batch (timing events): start, uploaded, projected, exact packed,
  // entropy-coded, assembled.
  static constexpr int kStageEvents = 6;
  cudaEvent_t stage_[kStageEvents] = {};
  double host_s_ = 0;
  BatchEncodeTimes times_;
  bool pending_ = false;
  int n_sequences_ = 0;
};

}  // namespace kvtc::cuda
