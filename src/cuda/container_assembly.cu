// Container assembly kernels: one block per sequence patches its chunk table (a scan over the threads'
// segments) and computes the header CRC (segments combined); then a second launch copies the chunks,
// many blocks per sequence (one block copying a whole 82 MB payload took about 120 ms on an H100).
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

// zlib CRC-32 of p[0, n), every thread of the block taking one segment (raw CRCs combined with the
// x^(8k) shift, as the DEFLATE kernel's block_crc32). Valid in every thread; call from all of them.
__device__ uint32_t block_crc32(const uint32_t* table, uint32_t* warp_parts, const uint8_t* p, uint64_t n, bool active) {
  const uint64_t seg = (n + kThreads - 1) / kThreads;
  const uint64_t a = min(n, uint64_t(threadIdx.x) * seg), b = min(n, a + seg);
  uint32_t part = 0;
  if (active && b > a) part = crc32_mul_mod(crc32_x_pow_8n(n - b), crc32_raw_update(table, 0, p + a, b - a));
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) part ^= __shfl_xor_sync(0xffffffffu, part, d);
  if ((threadIdx.x & 31) == 0) warp_parts[threadIdx.x >> 5] = part;
  __syncthreads();
  uint32_t raw = 0;
  for (int w = 0; w < kThreads / 32; ++w) raw ^= warp_parts[w];
  __syncthreads();  // warp_parts is reused
  return crc32_finish(raw, n);
}

// One block per sequence: the header template to `out`, then the chunk table patched by the block's
// threads, each over a contiguous segment of chunks (their stored sizes, a scan over the threads for
// the offsets, then the entries and copies: patch_chunk_table's result), then the header CRC.
__global__ void assemble_kernel(const AssemblyJob* jobs, int n_jobs, DeflateResults primary, DeflateResults dense) {
  __shared__ uint32_t table[256];
  __shared__ uint32_t warp_parts[kThreads / 32];
  __shared__ unsigned long long offsets[kThreads];  // a thread's payload bytes, then its first offset
  __shared__ uint32_t status, failed;
  __shared__ unsigned long long table_pos, payload;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) table[i] = crc32_table_entry(uint32_t(i));
  for (int s = blockIdx.x; s < n_jobs; s += gridDim.x) {
    const AssemblyJob job = jobs[s];
    if (threadIdx.x == 0) {
      uint64_t pos = 0;
      status = job.header_size > job.capacity                        ? uint32_t(kAssemblyOverflow)
               : !chunk_table_pos(job.header_size, job.n_chunks, &pos) ? uint32_t(kAssemblyBadTemplate)
                                                                       : uint32_t(kAssemblyOk);
      table_pos = pos;
      failed = 0;
    }
    __syncthreads();
    const bool ok = status == kAssemblyOk;
    if (ok)
      for (uint64_t i = threadIdx.x; i < job.header_size; i += blockDim.x) job.out[i] = job.header[i];
    const uint32_t seg = (job.n_chunks + kThreads - 1) / kThreads;
    const uint32_t c0 = min(job.n_chunks, threadIdx.x * seg), c1 = min(job.n_chunks, c0 + seg);
    unsigned long long bytes = 0;
    for (uint32_t c = c0; ok && c < c1; ++c) {
      ChunkChoice ch;
      if (choose_chunk(job.chunks[c], job.first_job + c, primary, dense, &ch) != kAssemblyOk) {
        failed = 1;  // every writer writes the same value; read after the barrier
        break;
      }
      bytes += ch.stored_bytes;
    }
    offsets[threadIdx.x] = bytes;
    __syncthreads();  // the template is in place, every segment's size known
    if (threadIdx.x == 0) {
      unsigned long long run = 0;
      for (int t = 0; t < kThreads; ++t) {
        const unsigned long long b = offsets[t];
        offsets[t] = run;
        run += b;
      }
      payload = run;
      if (status == kAssemblyOk && failed != 0) status = kAssemblyDeflateFailed;
      if (status == kAssemblyOk && job.header_size + run > job.capacity) status = kAssemblyOverflow;
    }
    __syncthreads();
    const bool fill = status == kAssemblyOk;
    uint64_t offset = offsets[threadIdx.x];
    for (uint32_t c = c0; fill && c < c1; ++c) {
      ChunkChoice ch;
      choose_chunk(job.chunks[c], job.first_job + c, primary, dense, &ch);  // succeeded above
      write_chunk_entry(job.out, job.header_size, table_pos, c, job.chunks[c], ch, offset, job.copies);
      offset += ch.stored_bytes;
    }
    __syncthreads();  // every entry written
    const uint32_t crc = block_crc32(table, warp_parts, job.out, fill ? job.header_size - 4 : 0, fill);
    if (threadIdx.x == 0) {
      if (fill) put_le32(job.out + job.header_size - 4, crc);
      *job.size_out = fill ? job.header_size + payload : 0;
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
