// Device side of container assembly (cuda/container_assembly.hpp): the dense gate between the two
// DEFLATE launches, and one block per sequence writing the complete container into caller memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/container_assembly.hpp"
#include "cuda/deflate_encode.cuh"

namespace kvtc::cuda {

// One dense alternative: the codes chunk it belongs to (its primary job) and its own DEFLATE job.
struct DenseGate {
  uint32_t primary_job = 0;
  uint32_t dense_raw_bytes = 0;
};

// For every dense job d: unless the primary job gates[d].primary_job succeeded with more than
// dense_raw_bytes bytes (GpuEncoder's retry rule), sets jobs[d].src_bytes to 0 so that the dense
// DEFLATE launch does next to nothing for it (its results are then ignored by the assembly).
cudaError_t launch_dense_gate(const DenseGate* gates, int n, DeflateResults primary, DeflateEncodeJob* jobs,
                              cudaStream_t stream);

// One sequence's container.
struct AssemblyJob {
  uint8_t* out = nullptr;           // capacity bytes of caller memory
  uint64_t capacity = 0;
  const uint8_t* header = nullptr;  // template, header_size bytes (device)
  uint64_t header_size = 0;
  const AssemblyChunk* chunks = nullptr;  // n_chunks (device)
  uint32_t n_chunks = 0;
  uint32_t first_job = 0;           // primary results of chunk i: first_job + i
  AssemblyCopy* copies = nullptr;   // n_chunks scratch entries (device)
  uint64_t* size_out = nullptr;     // container bytes (0 on failure)
  uint32_t* status_out = nullptr;   // AssemblyStatus
};

// One block per job: template copied to out, chunk table patched, header CRC, size and status
// written; then a second launch copies every job's payload with many blocks per job. Asynchronous on
// `stream`.
cudaError_t launch_assemble(const AssemblyJob* jobs, int n_jobs, DeflateResults primary, DeflateResults dense,
                            cudaStream_t stream);

}  // namespace kvtc::cuda
