#include "cuda/rans_encode.cuh"

#include "entropy/rans_chunk.hpp"

namespace kvtc::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ void put_le32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v >> 16);
  p[3] = uint8_t(v >> 24);
}

__device__ void finish(const RansEncodeJob& job, uint32_t* status, uint32_t st, uint32_t offset, uint32_t bytes) {
  job.result[0] = offset;
  job.result[1] = bytes;
  *status = st;
}

__global__ void rans_encode_kernel(const RansEncodeJob* jobs, int n_jobs, uint32_t* status) {
  const int w = blockIdx.x * kWarpsPerBlock + int(threadIdx.x >> 5);
  if (w >= n_jobs) return;
  const uint32_t t = threadIdx.x & 31;
  const RansEncodeJob job = jobs[w];
  const uint32_t N = job.n_lanes, n = job.n_symbols;
  const bool bad = N < 1 || N > uint32_t(kRansMaxLanes) || n > kRansMaxChunkSymbols || (job.capacity_bytes & 1u) ||
                   (reinterpret_cast<uintptr_t>(job.out) & 1u) || job.capacity_bytes < rans_encode_capacity_bytes(n, N) ||
                   (n > 0 && (job.n_runs == 0 || job.runs[0].begin != 0));
  if (bad) {
    if (t == 0) finish(job, status + w, kRansEncodeBadJob, 0, 0);
    return;
  }
  uint16_t* const words_end = reinterpret_cast<uint16_t*>(job.out + job.capacity_bytes);
  uint32_t x[2] = {kRansStateLow, kRansStateLow};
  int run[2] = {int(job.n_runs) - 1, int(job.n_runs) - 1};  // the run of each lane's current symbol
  uint32_t n_words = 0;  // words pushed so far (the same in every thread)
  bool err = false;
  for (uint32_t round = (n + N - 1) / N; round-- > 0;) {
    const uint32_t base = round * N;
    // Unrolled with constant bounds, so that x[] and run[] stay in registers; the skip is warp-uniform.
#pragma unroll
    for (int half = 1; half >= 0; --half) {
      if (half == 1 && N <= 32) continue;
      const uint32_t lane = uint32_t(half) * 32 + t, i = base + lane;
      const bool active = lane < N && i < n;
      uint32_t f = 1, cum = 0, pb = 1;
      bool emit = false;
      if (active) {
        int& r = run[half];
        while (r > 0 && job.runs[r].begin > i) --r;  // symbols only move down
        const RansEncodeRun rr = job.runs[r];
        const uint32_t s = job.symbols[i];
        const uint32_t e = s < rr.alphabet ? job.entries[rr.entry_offset + s] : 0u;
        if ((e >> 16) == 0 || rr.prob_bits < 1 || rr.prob_bits > 15) {
          err = true;
        } else {
          f = e >> 16;
          cum = e & 0xffffu;
          pb = rr.prob_bits;
          emit = uint64_t(x[half]) >= (uint64_t(f) << (32 - pb));
        }
      }
      const uint32_t mask = __ballot_sync(0xffffffffu, emit);
      if (emit) {
        // Emitting threads above t push before it (higher symbol index).
        const uint32_t pos = n_words + uint32_t(__popc(mask & ~((2u << t) - 1u)));
        words_end[-1 - int(pos)] = uint16_t(x[half] & 0xffffu);
        x[half] >>= 16;
      }
      n_words += uint32_t(__popc(mask));
      if (active && !err) x[half] = ((x[half] / f) << pb) + (x[half] % f) + cum;
    }
    if (__any_sync(0xffffffffu, err)) {
      if (t == 0) finish(job, status + w, kRansEncodeBadSymbol, 0, 0);
      return;
    }
  }
  const uint32_t header = uint32_t(kRansChunkHeaderBytes) + 4u * N, stream_bytes = 2u * n_words;
  const uint32_t offset = job.capacity_bytes - stream_bytes - header;
  uint8_t* const h = job.out + offset;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const uint32_t lane = uint32_t(half) * 32 + t;
    if (lane < N) put_le32(h + kRansStatesOffset + 4 * lane, x[half]);
  }
  if (t == 0) {
    put_le32(h + kRansSymbolsOffset, n);
    h[kRansLanesOffset] = uint8_t(N);
    h[kRansReservedOffset] = h[kRansReservedOffset + 1] = h[kRansReservedOffset + 2] = 0;
    put_le32(h + kRansStreamBytesOffset, stream_bytes);
    finish(job, status + w, kRansEncodeOk, offset, header + stream_bytes);
  }
}

}  // namespace

const char* rans_encode_status_name(uint32_t status) {
  switch (status) {
    case kRansEncodeOk: return "ok";
    case kRansEncodeBadJob: return "bad job (lanes, symbol count, capacity, alignment or runs)";
    case kRansEncodeBadSymbol: return "symbol its table cannot code";
    default: return "unknown status";
  }
}

cudaError_t launch_rans_encode(const RansEncodeJob* jobs_dev, int n_jobs, uint32_t* status_dev, cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  const int blocks = (n_jobs + kWarpsPerBlock - 1) / kWarpsPerBlock;
  rans_encode_kernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(jobs_dev, n_jobs, status_dev);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
