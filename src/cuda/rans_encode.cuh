// rANS chunks encoded on the GPU (docs/FORMAT.md, "rANS chunk"), byte for byte what the CPU's
// entropy/rans_encode.cpp writes for the same symbols, runs and lane count: the first stage of codec 3's
// encode on the device (issue 15), and the encode half of the entropy stage's GB/s.
//
// One warp per chunk. rANS codes the symbols backwards; symbol i belongs to lane i mod N, so the N
// symbols of a round [kN, kN + N) update N different states and are coded at once: thread t holds lanes
// t and t + 32. The words a round emits go out in the order the serial coder pushes them (descending
// symbol index: lanes 32..N-1 before 0..31, each half from its highest lane down): a ballot and a
// population count give each emitting thread its place. Words are written backwards from the end of
// the job's buffer, so that after the last round the stream already lies in the order the decoder
// reads it; the header goes right in front of it, and the job reports where the chunk starts.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::cuda {

// A run of a chunk's symbols coded with one table (entropy/rans_chunk.hpp's RansRun), by its first
// symbol and its table's place in the job's entry array. Runs are in symbol order, the first begins at
// 0; a run ends where the next begins (empty runs allowed).
struct RansEncodeRun {
  uint32_t begin = 0;
  uint32_t entry_offset = 0;  // entries[entry_offset + s] = freq[s] << 16 | cum[s], s < alphabet
  uint16_t alphabet = 0;
  uint8_t prob_bits = 0;      // 1..15
  uint8_t pad = 0;
};

struct RansEncodeJob {
  const uint8_t* symbols = nullptr;       // n_symbols (device)
  const RansEncodeRun* runs = nullptr;    // n_runs (device)
  const uint32_t* entries = nullptr;      // the runs' tables (device)
  uint8_t* out = nullptr;                 // capacity_bytes (device), 2-byte aligned
  uint32_t* result = nullptr;             // [2] (device): the chunk's offset in out and its size in bytes
  uint32_t capacity_bytes = 0;            // even, >= rans_encode_capacity_bytes(n_symbols, n_lanes)
  uint32_t n_symbols = 0;                 // <= kRansMaxChunkSymbols
  uint32_t n_runs = 0;
  uint32_t n_lanes = 0;                   // 1..64
};

enum RansEncodeStatus : uint32_t {
  kRansEncodeOk = 0,
  kRansEncodeBadJob = 1,     // lanes, symbol count, capacity, alignment, or runs not starting at symbol 0
  kRansEncodeBadSymbol = 2,  // a symbol outside its table's alphabet or of frequency 0, or a bad prob_bits
};

const char* rans_encode_status_name(uint32_t status);

// The most bytes a chunk can take: header, lane states, and at most one 16-bit word per symbol.
__host__ __device__ constexpr uint32_t rans_encode_capacity_bytes(uint32_t n_symbols, uint32_t n_lanes) {
  return 12u + 4u * n_lanes + 2u * n_symbols;
}

// Encodes jobs_dev[0 .. n_jobs) (device array); status_dev[i] gets job i's status. On an error the
// job's result is {0, 0}. Asynchronous on `stream`.
cudaError_t launch_rans_encode(const RansEncodeJob* jobs_dev, int n_jobs, uint32_t* status_dev, cudaStream_t stream);

}  // namespace kvtc::cuda
