// The CUDA backend behind the Backend interface (core/backend.hpp), so that the same tests and
// tools run CPU against GPU. No CUDA headers here: tests and tools include this file.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "kvtc/kvtc_cuda.hpp"

namespace kvtc {

// The CUDA backend. encode runs the whole encoder on the GPU (cuda/gpu_encoder.hpp): the same
// container as the CPU backend's chunk for chunk (same chunk table up to stored sizes, layouts picked by
// the same rule), DEFLATE by the GPU Huffman-only encoder. decode_coefficients inflates and
// dequantises on the GPU and returns the coefficients on the host (bit-identical to the CPU backend's);
// restore_layer reconstructs on the GPU (fp32 cuBLAS GEMM, RoPE and exact tokens) and copies the layer
// back. Coefficients from any backend restore; the last decoded ones stay on the device, so a layer
// loop uploads nothing. Creating the backend needs no device; calls without one return CUDA errors.
std::unique_ptr<Backend> make_cuda_backend();

// Test and benchmark hook into the GPU encoder of a backend from make_cuda_backend().
struct CudaEncodeProbe {
  // In. coef_in[s], when not empty, replaces the projection of stream s: [n_kept][M] component-major
  // coefficients of the compressed tokens (M = tokens - exact tokens), quantised as they are.
  std::vector<float> coef_in[2];
  bool keep_outputs = false;  // fill coef and raw below
  bool tf32 = false;          // projection on TF32 tensor cores instead of fp32 (kvtc::cuda::EncodeProjection)
  // Out (keep_outputs). coef[s]: the coefficients quantised, [n_kept][M]; raw[i]: chunk i of the chunk
  // table before DEFLATE (in the layout the table names).
  std::vector<float> coef[2];
  std::vector<std::vector<uint8_t>> raw;
  // Out. Device time per stage from CUDA events, and host clocks, in seconds (cuda/gpu_encoder.hpp).
  double host_s = 0, upload_s = 0, gather_s = 0, gemm_s = 0, quantize_s = 0, pack_s = 0, deflate_s = 0,
         d2h_s = 0, total_s = 0;
  int n_dense_chunks = 0;  // codes chunks stored in the dense layout
};
Result<EncodedCache> cuda_encode_probe(Backend& cuda_backend, const CalibrationData& cal, const KVCache& cache,
                                       const EncodeOptions& options, CudaEncodeProbe* probe);

// Inflates host-held raw DEFLATE streams on the GPU in one launch (the decoder's own kernel), for
// tests and benchmarks. raw_bytes[i]: the size stream i must inflate to. crc32: empty for no check,
// else one CRC-32 per stream. status[i]: 0 when stream i inflated to exactly raw_bytes[i], else the
// kernel's code (entropy/inflate.cuh). out[i] holds the bytes the kernel wrote (meaningful when 0).
// kernel_seconds (optional): the launch's device time, from CUDA events.
Status cuda_inflate_streams(const std::vector<std::vector<uint8_t>>& streams, const std::vector<uint32_t>& raw_bytes,
                            const std::vector<uint32_t>& crc32, std::vector<std::vector<uint8_t>>* out,
                            std::vector<uint32_t>* status, double* kernel_seconds = nullptr);

// Test and benchmark hook: restore_all of sequence `seq` into device buffers it allocates (with a
// layer event per layer), then every layer copied back as fp32 [n_kv_heads][n_tokens][head_dim].
Status cuda_restore_all_to_host(cuda::BatchDecoder& dec, const cuda::DeviceCalibration& dcal, int seq,
                                cuda::ElementType type, std::vector<std::vector<float>>* k,
                                std::vector<std::vector<float>>* v);

// Whether a CUDA device is usable; when not, `why` says why ("no CUDA device: ...").
bool cuda_device_available(std::string* why);

}  // namespace kvtc
