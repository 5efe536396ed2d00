// The CUDA backend behind the Backend interface (core/backend.hpp), so that the same tests and
// tools run CPU against GPU. No CUDA headers here: tests and tools include this file.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "kvtc/kvtc_cuda.hpp"

namespace kvtc {

// The CUDA backend. decode_coefficients inflates and dequantises on the GPU and returns the
// coefficients on the host (bit-identical to the CPU backend's); restore_layer reconstructs on the
// GPU (fp32 cuBLAS GEMM, RoPE and exact tokens) and copies the layer back. Coefficients from any
// backend restore; the last decoded ones stay on the device, so a layer loop uploads nothing.
// encode is not implemented on the GPU yet: it returns UNSUPPORTED.
// Creating the backend needs no device; calls without one return CUDA errors.
std::unique_ptr<Backend> make_cuda_backend();

// Inflates host-held raw DEFLATE streams on the GPU in one launch (the decoder's own kernel), for
// tests and benchmarks. raw_bytes[i]: the size stream i must inflate to. crc32: empty for no check,
// else one CRC-32 per stream. status[i]: 0 when stream i inflated to exactly raw_bytes[i], else the
// kernel's code (cuda/inflate.cuh). out[i] holds the bytes the kernel wrote (meaningful when 0).
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
