// The GPU encode pipeline (internal): a host cache in, a container (docs/FORMAT.md) out, with the CPU
// encoder's structure (src/cpu/encoder.cpp) chunk for chunk.
//
//   host    validate; the container plan every encoder executes (core/plan.hpp: token blocks, side,
//           codes and exact chunks in table order), plus the RoPE table and job tables; all before the first
//           device call
//   upload  the cache (fp32, both streams), tables
//   per stream: gather (RoPE removed, mean subtracted) in slabs -> projection (cuBLAS fp32 SGEMM,
//           coefficients component-major [n_kept][M]) -> quantise (one thread per token and group)
//   pack    every raw chunk, one launch (side, aligned codes, exact byte planes)
//   DEFLATE every chunk, one launch (cuda/deflate_encode.cuh); sizes, CRCs and statuses come back
//           (synchronisation 1)
//   dense   codes chunks whose stream exceeds the dense layout's size are packed dense and deflated
//           again, and the smaller kept: the CPU encoder's rule (synchronisation 2, only if any)
//   D2H     stored chunks gathered back to back on the device, one copy to the host (synchronisation 3)
//   host    header with serialize_container_header, report.
//
// What matches the CPU encoder: the chunk table except stored sizes and CRCs (and the layout of a
// chunk whose two DEFLATE encoders disagree on the dense rule); the gathered vectors bit for bit; and,
// given the same coefficients, every side and codes chunk byte for byte (format/quant_rules.hpp). The
// projection is a different GEMM (cuBLAS against OpenBLAS), so coefficients differ in the last bits and
// a code near a rounding boundary can differ by one step: restored caches agree to quantisation noise,
// not bit for bit. Exact tokens are bit for bit.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/backend.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/cuda_common.hpp"
#include "cuda/encode_kernels.cuh"
#include "cuda/gpu_decoder.hpp"

namespace kvtc::cuda {

// One chunk of the table, in table order, with what its pack job needs.
struct ChunkPlan {
  ChunkEntry entry;
  uint32_t pack_kind = kPackSide;
  int stream = 0;
  uint64_t col0 = 0;               // side / codes: first column of the symbol arrays
  uint32_t n_rows = 0;             // side rows
  uint32_t span_begin = 0, span_end = 0;
  uint32_t dense_bytes = 0;        // codes: size of the dense layout
  uint64_t raw_off = 0, stored_off = 0;
  // Results.
  bool dense = false;
  uint32_t stored_bytes = 0, crc32 = 0;
  const uint8_t* stored_dev = nullptr;
  const uint8_t* raw_dev = nullptr;
};

// Everything the host plans before the first device call, from the calibration, the options and the
// cache's shape alone (no values): the container header without its chunk table, the chunks in table
// order (entries with kind, stream, token and item ranges, aligned layout and raw_bytes; raw_off and
// stored_off are 16-byte aligned offsets into one raw and one stored area of raw_total and
// stored_total bytes), the quantisation and codes-span tables and the RoPE table.
struct EncodePlan {
  ContainerHeader header;
  std::vector<ChunkPlan> chunks;
  size_t n_coef_chunks = 0;             // side and codes chunks first, then the exact ones
  std::vector<CodesSpan> spans;
  std::vector<QuantGroup> qgroups[2];
  int64_t k[2] = {0, 0};                // kept components per stream
  uint32_t side_rows[2] = {0, 0};
  int64_t t0 = 0, m = 0;                // first compressed token, compressed tokens
  uint64_t raw_total = 0, stored_total = 0;
  // The compressed tokens' RoPE table is computed on the device (launch_rope_table, the decoder's
  // kernel) from this first position: [m][head_dim / 2] float2 when m > 0 and keys keep components.
  int64_t rope_first_position = 0;
  bool needs_rope() const { return m > 0 && k[0] > 0; }
};

// Every encoder's option checks (core/plan.hpp) and codec 2 only (UNSUPPORTED otherwise); the shape against
// the calibration (MISMATCH).
Status check_gpu_encode_options(const EncodeOptions& options);
Status check_encode_shape(const CalibrationData& cal, const ModelShape& shape, int64_t n_tokens);
// Plans a container (see EncodePlan); device_rows: basis rows on the device per stream (the allocation
// must not keep more).
Status plan_encode(const CalibrationData& cal, const int64_t device_rows[2], const ModelShape& shape, DType dtype,
                   int64_t n_tokens, int64_t position_offset, const std::map<std::string, std::string>& metadata,
                   const EncodeOptions& options, EncodePlan* plan);

class GpuEncoder {
 public:
  GpuEncoder() = default;
  ~GpuEncoder();
  GpuEncoder(const GpuEncoder&) = delete;
  GpuEncoder& operator=(const GpuEncoder&) = delete;

  // The checks that need no device: options, cache, shape against the calibration (MISMATCH).
  static Status check_inputs(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& options);

  // Encodes `cache` with `gcal` (the fp32 upload of `cal`) on `stream` and waits for the result.
  // probe: optional inputs (replacement coefficients) and outputs (times, intermediate bytes).
  // Device buffers are kept between calls and grow only. Not thread-safe: one encoder per thread.
  Status encode(const GpuCalibration& gcal, const CalibrationData& cal, const KVCache& cache,
                const EncodeOptions& options, cudaStream_t stream, EncodedCache* out, CudaEncodeProbe* probe);

 private:
  Status ensure_handle();

  cublasHandle_t handle_ = nullptr;
  DeviceBuffer cache_[2], rope_, x_, coef_[2], sym_[2], side_[2], groups_[2];
  DeviceBuffer raw_, stored_, spans_, pack_jobs_, deflate_jobs_, results_;
  DeviceBuffer dense_raw_, dense_stored_, dense_pack_jobs_, dense_deflate_jobs_, dense_results_;
  DeviceBuffer copy_jobs_, payload_;
};

}  // namespace kvtc::cuda
