// Host side of the GPU rANS encoder (cuda/rans_encode.cuh) for chunks given as the CPU encoder takes
// them (entropy/rans_encode.hpp: symbols, runs of RansTables, a lane count): uploads a batch, encodes
// it in one launch, and returns each chunk's bytes. Used by the GPU tests and the entropy-stage bench;
// the device-resident codec 3 encoder will build its jobs on the device instead.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "cuda/cuda_common.hpp"
#include "cuda/rans_encode.cuh"
#include "entropy/rans_chunk.hpp"
#include "kvtc/status.hpp"

namespace kvtc::cuda {

struct RansChunkInput {
  const uint8_t* symbols = nullptr;  // host
  uint32_t n_symbols = 0;
  const RansRun* runs = nullptr;     // host; tables shared between runs and chunks are uploaded once
  uint32_t n_runs = 0;
  int n_lanes = 32;
};

class RansBatchEncoder {
 public:
  // Uploads the chunks (symbols, runs, tables) and the job table, asynchronously on `stream`; the
  // inputs must stay valid until the next synchronisation. INVALID_ARGUMENT if a chunk's runs do not
  // cover its symbols or a table is not valid (as rans_encode checks on the host).
  Status upload(const std::vector<RansChunkInput>& chunks, cudaStream_t stream);
  // Encodes every uploaded chunk in one launch, asynchronously.
  Status encode(cudaStream_t stream);
  // Waits for the stream and returns each chunk's bytes (rans_encode's `out` for the same input); a
  // chunk the kernel refused gives INVALID_ARGUMENT naming it and its status.
  Status download(std::vector<std::vector<uint8_t>>* chunks, cudaStream_t stream);
  // Symbols in the batch (for throughput figures).
  uint64_t n_symbols() const { return n_symbols_; }

 private:
  std::vector<RansEncodeJob> jobs_;
  std::vector<uint64_t> out_offset_;  // each job's buffer in out_
  uint64_t n_symbols_ = 0;
  DeviceBuffer symbols_, runs_, entries_, out_, results_, status_, jobs_dev_;
  std::vector<uint8_t> host_symbols_;
  std::vector<RansEncodeRun> host_runs_;
  std::vector<uint32_t> host_entries_;
};

}  // namespace kvtc::cuda
