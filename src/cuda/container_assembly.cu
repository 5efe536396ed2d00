// Container assembly kernels. Simple on purpose: thread 0 of a sequence's block walks its chunk table
// (a prefix sum over the stored sizes) and computes the header CRC; then a second launch copies the
// chunks, many blocks per sequence (one block copying a whole 82 MB payload took about 120 ms on an H100).
#include "cuda/container_assembly.cuh"

namespace kvtc::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void dense_gate_kernel(const DenseGate* gates, int n, DeflateResults primary, DeflateEncodeJob* jobs) {
  for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < n; d += gridDim.x * blockDim.x) {
    const uint32_t j = gates[d].primary_job;
    const bool retry = primary.status[j] == kEncodeOk && primary.bytes[j] > gates[d].dense_raw_bytes;
    if (!retry) jobs[d].src_bytes = 0;
  }
}

__global__ void assemble_kernel(const AssemblyJob* jobs, int n_jobs, DeflateResults primary, DeflateResults dense) {
  __shared__ uint32_t table[256];
  __shared__ uint32_t status;
  __shared__ unsigned long long total;
  for (int s = blockIdx.x; s < n_jobs; s += gridDim.x) {
    const AssemblyJob job = jobs[s];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) table[i] = crc32_table_entry(uint32_t(i));
    if (threadIdx.x == 0) {
      status = job.header_size <= job.capacity ? uint32_t(kAssemblyOk) : uint32_t(kAssemblyOverflow);
      total = 0;
    }
    __syncthreads();
    if (status == kAssemblyOk)
      for (uint64_t i = threadIdx.x; i < job.header_size; i += blockDim.x) job.out[i] = job.header[i];
    __syncthreads();
    if (threadIdx.x == 0 && status == kAssemblyOk) {
      uint64_t t = 0;
      uint32_t st = patch_chunk_table(job.out, job.header_size, job.chunks, job.n_chunks, job.first_job, primary,
                                      dense, job.copies, &t);
      if (st == kAssemblyOk && t > job.capacity) st = kAssemblyOverflow;
      if (st == kAssemblyOk) put_le32(job.out + job.header_size - 4, crc32_with_table(table, job.out, job.header_size - 4));
      status = st;
      total = st == kAssemblyOk ? t : 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      *job.size_out = total;
      *job.status_out = status;
    }
    __syncthreads();  // shared state is reused by the block's next sequence
  }
}

// Every chunk's bytes to their place (copies[], written by assemble_kernel): blockIdx.y picks the
// sequence, the x blocks share its chunks, a chunk's bytes are shared by one block's threads. Sequences
// whose assembly failed are skipped (their size is already 0).
__global__ void copy_chunks_kernel(const AssemblyJob* jobs, int n_jobs) {
  for (int s = blockIdx.y; s < n_jobs; s += gridDim.y) {
    const AssemblyJob job = jobs[s];
    if (*job.status_out != uint32_t(kAssemblyOk)) continue;
    for (uint32_t c = blockIdx.x; c < job.n_chunks; c += gridDim.x) {
      const AssemblyCopy cp = job.copies[c];
      for (uint32_t i = threadIdx.x; i < cp.n_bytes; i += blockDim.x) job.out[cp.dst_offset + i] = cp.src[i];
    }
  }
}

}  // namespace

cudaError_t launch_dense_gate(const DenseGate* gates, int n, DeflateResults primary, DeflateEncodeJob* jobs,
                              cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int blocks = (n + kThreads - 1) / kThreads;
  dense_gate_kernel<<<blocks < 65535 ? blocks : 65535, kThreads, 0, stream>>>(gates, n, primary, jobs);
  return cudaGetLastError();
}

cudaError_t launch_assemble(const AssemblyJob* jobs, int n_jobs, DeflateResults primary, DeflateResults dense,
                            cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  assemble_kernel<<<n_jobs < 65535 ? n_jobs : 65535, kThreads, 0, stream>>>(jobs, n_jobs, primary, dense);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  // 512 blocks per sequence share its chunks (a sequence has hundreds to tens of thousands of them).
  copy_chunks_kernel<<<dim3(512, n_jobs < 65535 ? n_jobs : 65535), kThreads, 0, stream>>>(jobs, n_jobs);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
