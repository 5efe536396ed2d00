// The GPU decode pipeline (internal): a calibration's means and bases on the device, and a batch of
// containers decoded on the device (inflate -> unpack + dequantise -> exact tokens -> RoPE table),
// then reconstructed a layer at a time with cuBLAS.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "core/calibration_data.hpp"
#include "cuda/cuda_common.hpp"
#include "cuda/ecsq_device_level.hpp"
#include "cuda/fp8_gemm.hpp"
#include "cuda/restore_kernels.cuh"
#include "format/container.hpp"

namespace kvtc::cuda {

// Means and bases of both streams on the device: fp32 rows for exact reconstruction, bf16 rows for
// the tensor-core path, an E4M3 copy for the FP8 path (any of them, as asked). Rows are the first
// `rows[s]` basis components.
struct GpuCalibration {
  ModelShape shape;
  uint64_t fingerprint = 0;
  int64_t rank[2] = {0, 0};
  int64_t rows[2] = {0, 0};
  bool has_f32 = false, has_bf16 = false, has_fp8 = false;
  DeviceBuffer mean[2];        // float [p]
  DeviceBuffer basis_f32[2];   // float [rows][p]
  DeviceBuffer basis_bf16[2];  // bf16 [rows][p]
  // E4M3 [p][rows_fp8], components contiguous and zero-padded to a multiple of 16 (the FP8 GEMM's
  // "TN" operand), scaled by 448 / max |basis|; fp8_scale[s] is its scale block (cuda/fp8_convert.cuh).
  DeviceBuffer basis_fp8[2];
  DeviceBuffer fp8_scale[2];
  int64_t rows_fp8[2] = {0, 0};
  DeviceBuffer inv_freq;       // double [head_dim / 2]
  // Codec 3: the ECSQ levels containers have used, uploaded on first use (shared by the decoders of
  // this calibration; a new upload() starts an empty cache).
  std::shared_ptr<EcsqLevelCache> ecsq_levels = std::make_shared<EcsqLevelCache>();

  // max_rows < 0: all rank rows.
  Status upload(const CalibrationData& cal, bool f32, bool bf16, int64_t max_rows, cudaStream_t stream);
  // Adds the E4M3 basis (after upload()).
  Status upload_fp8(const CalibrationData& cal, cudaStream_t stream);
};

enum class OutType { kF32, kBF16 };

// One container's decoded state on the device.
struct GpuSequence {
  ParsedContainer container;
  int64_t n_kept[2] = {0, 0};
  DeviceBuffer coef_f32[2];   // [M][n_kept], or [n_kept][M] where coef_by_component
  DeviceBuffer coef_bf16[2];  // the same in bf16
  // FP8 reconstruction: E4M3 [M][kept_fp8[s]] token-major (components contiguous, zero-padded to a
  // multiple of 16); fp8_scale holds a scale block per stream (cuda/fp8_convert.cuh), [2][kFp8ScaleFloats].
  DeviceBuffer coef_fp8[2];
  int64_t kept_fp8[2] = {0, 0};
  DeviceBuffer fp8_scale;
  bool has_fp8 = false;       // coef_fp8 holds this batch's coefficients
  // Per stream: coefficients stored component-major, [n_kept][M]. The GPU's codec 3 decoder writes
  // them so (a warp's symbols are consecutive tokens of one component, one contiguous store); codec 2
  // and coefficients uploaded from the host are token-major. The restore GEMM reads either.
  bool coef_by_component[2] = {false, false};
  DeviceBuffer comps[2];      // CompInfo [n_kept]
  DeviceBuffer exact;         // fp32 exact tokens, blocks [H][n][D]
  std::vector<int64_t> exact_offset[2][2];  // [stream][head/tail][layer]: float offset in exact, -1 none
  DeviceBuffer rope;          // float2 [M][head_dim / 2]
};

// Per-stage device times of the last decode, from CUDA events (seconds). Codec 3 codes chunks decode
// (rANS, raw bits and dequantisation in one kernel) in the dequantize stage; inflate is then exact chunks.
// fp8_s: the E4M3 copies (want_fp8), after the dequantize stage. upload_s runs from the payload copy,
// issued once the headers are parsed, to the job tables' arrival: it includes the host work between.
// host_s: host clock from decode()'s start to its last job table (parsing, checks, job tables);
// wait_s: host clock of its final synchronisation.
struct GpuDecodeTimes {
  double upload_s = 0, inflate_s = 0, dequantize_s = 0, exact_s = 0, total_s = 0;
  double host_s = 0, wait_s = 0, fp8_s = 0;
};

struct GpuDecodeOptions {
  bool verify_checksums = true;
  bool want_f32 = true, want_bf16 = true;  // coefficient copies kept
  // An E4M3 copy as well (from the fp32 or bf16 one), for FP8 reconstruction of bf16 restores.
  bool want_fp8 = false;
  bool overlap_exact = false;              // exact chunks on a second stream; exact_status() reports them
  bool defer_status = false;               // no host synchronisation: status() waits and reports
  // restore_layers reconstructs up to this many consecutive layers with one GEMM (the restore scratch
  // grows to match); 1: one GEMM per layer and stream.
  int layers_per_gemm = 1;
  bool fp8_fast_accum = false;             // FP8 GEMMs without fp32 promotion of partial sums
};

class GpuBatchDecoder {
 public:
  GpuBatchDecoder() = default;
  ~GpuBatchDecoder();
  GpuBatchDecoder(const GpuBatchDecoder&) = delete;
  GpuBatchDecoder& operator=(const GpuBatchDecoder&) = delete;

  // Decodes every container in one launch per stage (all chunks of all sequences together). Checks
  // each against the calibration first; per-chunk statuses are read back once at the end (CORRUPT or
  // CHECKSUM_MISMATCH naming the sequence and chunk). want_f32 / want_bf16: coefficient copies kept.
  // overlap_exact: exact chunks inflate on a second stream and their statuses are checked by
  // exact_status() instead; restore_layer waits for them on the device before writing exact rows.
  Status decode(const GpuCalibration& gcal, const CalibrationData& cal,
                const std::vector<std::pair<const uint8_t*, size_t>>& containers, bool verify_checksums,
                bool want_f32, bool want_bf16, bool overlap_exact, cudaStream_t stream, GpuDecodeTimes* times);
  Status decode(const GpuCalibration& gcal, const CalibrationData& cal,
                const std::vector<std::pair<const uint8_t*, size_t>>& containers, const GpuDecodeOptions& options,
                cudaStream_t stream, GpuDecodeTimes* times);
  // Waits for the exact chunks of an overlapped decode and reports their statuses (OK otherwise);
  // sets times->exact_s.
  Status exact_status(GpuDecodeTimes* times);
  // Waits for everything the last decode left pending and reports every chunk status; the stage times.
  Status status(GpuDecodeTimes* times);

  // Caller memory for every device buffer of decode() and of the restores after it (nullptr: own
  // buffers again), except codec 3's level tables, which the device calibration owns. Waits for work
  // still running in the old buffers.
  Status set_workspace(void* base, size_t bytes);
  // Bytes of workspace decode() needs for these containers (host work only: parses the headers).
  static Result<size_t> workspace_bytes(const GpuCalibration& gcal, const CalibrationData& cal,
                                        const std::vector<std::pair<const uint8_t*, size_t>>& containers,
                                        const GpuDecodeOptions& options);
  // Loads coefficients decoded elsewhere (the CPU backend) as sequence 0, fp32.
  Status load_host(const GpuCalibration& gcal, const DecodedCoefficients& dec, cudaStream_t stream);

  // Reconstructs layer `layer` of sequence `seq` into k_dev and v_dev, each [n_kv_heads][n_tokens][head_dim]
  // of `type`. Asynchronous on `stream`. kBF16 restores of a batch decoded with want_fp8, on a
  // calibration with its E4M3 basis, reconstruct with the FP8 GEMM (cuda/fp8_gemm.hpp).
  Status restore_layer(const GpuCalibration& gcal, int seq, int layer, void* k_dev, void* v_dev, OutType type,
                       cudaStream_t stream);
  // Reconstructs layer `layer` of sequence `seq` into vLLM's paged layer cache [num_blocks][2][block_size]
  // [n_kv_heads][head_dim] of `type`: token t goes to block block_table[t / block_size] (device int32,
  // at least ceil(n_tokens / block_size) entries), slot t % block_size. Asynchronous on `stream`.
  Status restore_layer_paged(const GpuCalibration& gcal, int seq, int layer, void* layer_cache, const int32_t* block_table,
                             int block_size, OutType type, cudaStream_t stream);

  // Layers [first_layer, first_layer + n_layers) of sequence `seq` into k_layers[i] / v_layers[i]
  // (contiguous, as restore_layer), in order, with one GEMM per stream for every group of up to
  // layers_per_gemm layers (the decode's option); after layer first_layer + i, records events[i] where
  // events and events[i] are not null. A group's layers all become ready when its GEMMs end.
  Status restore_layers(const GpuCalibration& gcal, int seq, int first_layer, int n_layers, void* const* k_layers,
                        void* const* v_layers, OutType type, cudaStream_t stream, const cudaEvent_t* events);

  int n_sequences() const { return int(seqs_.size()); }
  const GpuSequence& sequence(int i) const { return seqs_[size_t(i)]; }

 private:
  Status ensure_handle();
  Status alloc(DeviceBuffer& buffer, size_t bytes);
  Status check_coefficients();
  Status convert_to_fp8(bool from_f32, cudaStream_t stream);
  Status prepare_sequence(const GpuCalibration& gcal, GpuSequence& seq, cudaStream_t stream);
  // Layers [layer0, layer0 + n) into out[2 * i + s] (layer layer0 + i, stream s), one GEMM per stream
  // for all n (n > 1 needs a bf16 or paged destination); events as restore_layers.
  Status restore_group_to(const GpuCalibration& gcal, int seq, int layer0, int n, const DstLayout* out,
                          cudaStream_t stream, const cudaEvent_t* events);

  cublasHandle_t handle_ = nullptr;
  Fp8Gemm fp8_gemm_;
  cudaStream_t side_ = nullptr;  // exact chunks of overlapped decodes
  cudaEvent_t payload_ready_ = nullptr, exact_begin_ = nullptr, exact_done_ = nullptr;
  cudaEvent_t coef_done_ = nullptr, stage_events_[5] = {};
  bool exact_recorded_ = false, exact_pending_ = false, coef_pending_ = false;
  size_t exact_jobs_begin_ = 0, n_inflate_jobs_ = 0, n_dequant_jobs_ = 0, n_ecsq_jobs_ = 0;
  std::vector<std::pair<uint32_t, uint32_t>> job_chunk_;       // (sequence, chunk) of each inflate job
  std::vector<std::pair<uint32_t, uint32_t>> ecsq_job_chunk_;  // and of each codec 3 codes chunk
  GpuDecodeTimes last_times_;
  int layers_per_gemm_ = 1;  // the last decode's option
  bool fp8_fast_accum_ = false;  // the last decode's option
  Arena arena_;
  bool use_arena_ = false, plan_only_ = false;
  std::vector<GpuSequence> seqs_;
  DeviceBuffer payload_, raw_, inflate_jobs_, status_, dequant_jobs_, ecsq_jobs_, exact_jobs_, tmp_;
  DeviceBuffer class_rows_;  // format 4: the token rows of each block with classes (class-1 tokens first)
};

}  // namespace kvtc::cuda
