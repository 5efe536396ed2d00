// Codec 3 codes chunks on the GPU (docs/FORMAT.md, section 9 and "rANS chunk"): one warp per chunk
// decodes the interleaved rANS lanes a round at a time (lane l on thread l mod 32; the words a round
// reads are handed out by a ballot and a prefix count), reads each symbol's escape and bucket bits at
// offsets from a warp prefix sum, and writes the dequantised coefficients straight to the stream's
// coefficient matrix: entropy decoding fused with dequantisation, no intermediate symbols in memory.
// Coefficients are bit-identical to the CPU decoder's (src/core/ecsq_chunk.cpp); every read of a
// chunk is bounds-checked and a malformed chunk ends with a status, never a fault.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::cuda {

// One component with a cell at the container's level, in component order (components without a cell
// have no entry; their coefficients stay 0).
struct EcsqDeviceComponent {
  uint32_t component = 0;     // j: the coefficient column
  uint32_t slot_offset = 0;   // bytes into the level's slot array: 2^prob_bits slot -> symbol bytes
  uint32_t entry_offset = 0;  // into the level's entry array: per symbol freq << 16 | cum
  float step = 0.0f, delta = 0.0f;
  uint16_t alphabet = 0;      // the table's alphabet A; symbol A - 1 is the escape
  uint8_t prob_bits = 0;
  // Symbols from here on take the kernel's slow path: EcsqDecodeLevel's n_direct, min(A - 1, 201),
  // so the escape and every bucket magnitude (raw bits follow them); symbols below it are direct
  // magnitudes whose coefficient their entry holds.
  uint8_t slow_from = 0;
};

// A cell's symbol: its rANS entry (freq << 16 | cum) and, for symbols below the cell's slow_from, the
// coefficient it decodes to (the CPU decoder's EcsqDecodeLevel::values); 0 for the others. One 8-byte
// load gives the table step and the value.
struct EcsqDeviceEntry {
  uint32_t freq_cum = 0;
  float value = 0.0f;
};

// One codes chunk of an ECSQ stream.
struct EcsqDecodeJob {
  const uint8_t* chunk = nullptr;                // stored bytes (device)
  const EcsqDeviceComponent* cells = nullptr;    // the level's components with a cell (device)
  const uint8_t* slots = nullptr;                // the level's slot tables (device)
  const EcsqDeviceEntry* entries = nullptr;      // the level's symbol entries (device)
  float* coef_f32 = nullptr;                     // coefficient (token r, component j) at r * token_stride
  uint16_t* coef_bf16 = nullptr;                 // + j * component_stride; bf16; either may be null
  // Not null: the largest magnitude of the coefficients written (the fp32 ones where coef_f32 is set,
  // else the bf16 ones), merged into *abs_max with an atomic max (non-negative floats order as their
  // bits do). It is the FP8 copy's per-tensor amax (cuda/fp8_convert.cuh, kFp8AmaxIndex), found
  // during the decode instead of by a pass over the coefficients.
  float* abs_max = nullptr;
  uint32_t chunk_bytes = 0;
  uint32_t crc32 = 0;
  uint32_t n_symbols = 0;   // from the chunk table, checked against the level by the host
  uint32_t n_tokens = 0;
  uint32_t first_cell = 0;  // index in cells of the chunk's first component with a cell
  uint32_t row0 = 0;        // first coefficient row r (token_begin - n_head_exact)
  // Element strides of the coefficient matrices. Component-major ([n_kept][M]: token_stride 1,
  // component_stride M) makes a warp's 32 consecutive symbols, which are consecutive tokens of one
  // component, one contiguous store; token-major ([M][n_kept]) scatters them n_kept apart.
  uint32_t token_stride = 0, component_stride = 0;
  // Token classes (format 4, docs/FORMAT.md section 10): rows != null. The chunk's components are
  // [c0, c1); for each, a run of its n_high class-1 tokens at the high level (high_cells / slots /
  // entries) if that level has a cell there, then a run of its n_tokens - n_high class-0 tokens at the
  // base level (cells / slots / entries; first_cell unused). A level has a cell for component j when
  // j < its n_kept and cells_before[j + 1] > cells_before[j] (the level's count of components with a
  // cell before j, [n_kept + 1]); that cell is cells[cells_before[j]]. rows: the block's token offsets
  // from row0, class-1 tokens first, each class in token order.
  const uint32_t* rows = nullptr;
  const uint32_t* cells_before = nullptr;
  const EcsqDeviceComponent* high_cells = nullptr;
  const uint8_t* high_slots = nullptr;
  const EcsqDeviceEntry* high_entries = nullptr;
  const uint32_t* high_cells_before = nullptr;
  uint32_t c0 = 0, c1 = 0, n_kept = 0, high_n_kept = 0, n_high = 0;
};

enum EcsqDecodeStatus : uint32_t {
  kEcsqOk = 0,
  kEcsqBadChecksum = 1,     // CRC-32 of the stored bytes differs from the chunk table's
  kEcsqBadHeader = 2,       // rANS header: symbol count, lanes, reserved bytes, stream size, sizes
  kEcsqBadInitialState = 3, // a lane starts below 2^16
  kEcsqStreamOverrun = 4,   // the word stream ends before the last symbol
  kEcsqStreamLeftover = 5,  // words left after the last symbol
  kEcsqBadFinalState = 6,   // a lane does not end in 2^16
  kEcsqBadEscape = 7,       // an escape to a symbol the table codes, or one no code has
  kEcsqRawOverrun = 8,      // raw bits end inside an escape or a bucket
  kEcsqRawLeftover = 9,     // raw bits left over, or the raw bytes do not match their count
  kEcsqBadPadding = 10,     // nonzero padding bits after the raw bits
};

const char* ecsq_decode_status_name(uint32_t status);

// The kernel instance a job runs on: chunks of at most 32 rANS lanes (by their header's lane count)
// on one lane per thread and twice the occupancy, the rest on two; chunks of token-class streams
// (rows != null) on instances that walk class runs, the others on ones without that code and its
// registers. ecsq_job_group gives a job's instance, and launch_ecsq_decode takes the jobs sorted by it.
constexpr int kEcsqJobGroups = 4;
inline int ecsq_job_group(bool narrow, bool by_class) { return (narrow ? 0 : 2) + (by_class ? 1 : 0); }

// Decodes jobs_dev[0 .. n) (device array; n the sum of group_jobs) into their coefficient matrices;
// status_dev[i] gets job i's status. The first group_jobs[0] jobs are group 0's, and so on: a chunk
// with more lanes than its group takes, or with rows set otherwise than its group has, gets
// kEcsqBadHeader. verify_crc: check each chunk's CRC-32 first. Asynchronous on `stream`.
cudaError_t launch_ecsq_decode(const EcsqDecodeJob* jobs_dev, const int (&group_jobs)[kEcsqJobGroups], bool verify_crc,
                               uint32_t* status_dev, cudaStream_t stream);

}  // namespace kvtc::cuda
