// Codec 3 codes chunks on the GPU: rANS decode fused with escape / bucket bits and dequantisation.
// Coefficients go to the decoder's component-major matrices (cuda/gpu_decoder.hpp, coef_by_component):
// a warp's 32 symbols are consecutive tokens of one component, so each store is one contiguous run.
//
// Thread `lane` of a warp holds rANS lanes `lane` and `lane + 32` (chunks have 1..64 lanes). A round
// of N symbols (i = rN .. rN + N - 1, symbol i on rANS lane i mod N) is decoded 32 lanes at a time:
// each thread does the table step for its lane, then the threads whose state fell below 2^16 take the
// next words in lane order (ballot, then the count of lower lanes that need one), exactly the order
// of the serial decoder. The same 32 symbols are consecutive in the chunk, so their raw bits are
// consecutive too: each symbol's offset is a warp prefix sum of the bit counts. An escaped symbol's
// count is known only after reading its 8 escape bits, so escapes (rare: the tables cover the codes
// calibration saw) are resolved one at a time in lane order before the sum. Only escapes and bucket
// magnitudes (symbols from the cell's slow_from on) have raw bits, so a round where no lane decoded
// one, nearly every round, skips all of that: its coefficients come with the rANS entries (the CPU
// decoder's direct values), one 8-byte load per symbol. Every read is checked against the chunk;
// states stay in [2^16, 2^32) for any input (docs/FORMAT.md, "rANS chunk").
#include "cuda/ecsq_decode.cuh"

#include <cuda_bf16.h>

#include "entropy/rans_chunk.hpp"
#include "format/ecsq_rules.hpp"
#include "util/crc32.cuh"

namespace kvtc::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr uint32_t kFullMask = 0xffffffffu;

__device__ __forceinline__ uint32_t warp_inclusive_sum(uint32_t v, uint32_t lane) {
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const uint32_t u = __shfl_up_sync(kFullMask, v, d);
    if (lane >= uint32_t(d)) v += u;
  }
  return v;
}

// Asks for the L1 line holding p (a hint: no fault, no result; p need not be aligned).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.L1 [%0];" ::"l"(p)); }

// Bits [at, at + n) of the raw area, least significant first (n <= 27; the caller checked that they
// lie within the raw bits).
__device__ __forceinline__ uint32_t read_bits(const uint8_t* raw, uint64_t at, uint32_t n) {
  if (n == 0) return 0;
  const uint64_t byte = at >> 3;
  const uint32_t shift = uint32_t(at & 7);
  uint64_t v = 0;
  for (uint32_t k = 0; k < (shift + n + 7) / 8; ++k) v |= uint64_t(raw[byte + k]) << (8 * k);
  return uint32_t(v >> shift) & ((1u << n) - 1u);
}

// Raw bits after signed symbol s: the bucket bits of its magnitude symbol (format/ecsq_rules.hpp).
__device__ __forceinline__ uint32_t bucket_bits(uint32_t s) { return uint32_t(ecsq_bucket_bits(ecsq_magnitude_symbol(s))); }

// One chunk by one warp; every return is warp-uniform. KH: rANS lanes per thread, 1 for chunks of up
// to 32 lanes (64 registers, 32 warps per SM; with token classes 72 and 28, where 64 spilled), 2 for
// up to 64 (the second lane's state and cursors take the kernel to 96 registers). kByClass: the
// chunk's stream has token classes (job.rows set); without, the class-run cursors and their registers
// are compiled out.
// amax: the largest fp32 magnitude this thread decoded (for job.abs_max), merged by the caller.
template <int KH, bool kByClass>
__device__ uint32_t decode_chunk(const EcsqDecodeJob& job, const uint32_t* crc_table, uint32_t lane, float& amax) {
  const uint8_t* c = job.chunk;
  const uint32_t nb = job.chunk_bytes;
  if (crc_table != nullptr && warp_crc32(c, nb, crc_table) != job.crc32) return kEcsqBadChecksum;
  // Header (entropy/rans_chunk.hpp), then the raw-bit series after the rANS chunk.
  if (nb < kRansChunkHeaderBytes + 4 || (job.rows != nullptr) != kByClass) return kEcsqBadHeader;
  const uint32_t n = get_le32(c + kRansSymbolsOffset), n_lanes = c[kRansLanesOffset],
                 stream_bytes = get_le32(c + kRansStreamBytesOffset);
  const uint8_t* reserved = c + kRansReservedOffset;
  if ((reserved[0] | reserved[1] | reserved[2]) != 0 || n != job.n_symbols || n > kRansMaxChunkSymbols || n_lanes < 1 ||
      n_lanes > uint32_t(kRansMaxLanes) || n_lanes > 32u * KH || stream_bytes % 2 != 0 || stream_bytes > 2ull * n)
    return kEcsqBadHeader;
  const uint64_t rans_bytes = kRansStatesOffset + 4ull * n_lanes + stream_bytes;
  if (rans_bytes + 4 > nb) return kEcsqBadHeader;
  const uint32_t n_raw = get_le32(c + rans_bytes);
  const uint64_t raw_bytes = nb - rans_bytes - 4;
  if (raw_bytes != (uint64_t(n_raw) + 7) / 8) return kEcsqRawLeftover;
  const uint8_t* raw = c + rans_bytes + 4;
  if (n_raw % 8 != 0 && (raw[raw_bytes - 1] >> (n_raw % 8)) != 0) return kEcsqBadPadding;

  // States of rANS lanes `lane` (x0) and `lane + 32` (x1); lanes beyond N stay at 2^16.
  uint32_t x0 = kRansStateLow, x1 = kRansStateLow;
  if (lane < n_lanes) x0 = get_le32(c + kRansStatesOffset + 4 * lane);
  if (KH == 2 && lane + 32 < n_lanes) x1 = get_le32(c + kRansStatesOffset + 4 * (lane + 32));
  if (__any_sync(kFullMask, x0 < kRansStateLow || x1 < kRansStateLow)) return kEcsqBadInitialState;
  const uint8_t* words = c + kRansStatesOffset + 4 * n_lanes;
  const uint32_t n_words = stream_bytes / 2;
  const uint32_t halves = (n_lanes + 31) / 32;
  // Cursors of the thread's rANS lanes `lane` (h = 0) and `lane + 32` (h = 1): symbol i = round + l
  // of the chunk is token t[h] of its k[h]-th component with a cell. They advance by n_lanes a round,
  // dividing only when they cross into another component, and the component's descriptor is loaded
  // only when k changes (every n_tokens / n_lanes rounds), so a round's dependent loads are the table
  // slot, the symbol entry and the word. With token classes k[h] = 2 j + (1 - class) walks the runs
  // of the chunk's components j (run_length: 0 where the class's level has no cell for j).
  constexpr bool by_class = kByClass;
  // What every symbol reads, in registers: the job itself may lie in shared memory, where each
  // coefficient store (a generic pointer) would make the compiler read these fields again.
  const uint32_t n_tokens = job.n_tokens;
  const uint32_t* const rows = job.rows;
  float* const coef_f32 = job.coef_f32;
  uint16_t* const coef_bf16 = job.coef_bf16;
  // Per rANS lane of the thread: the cell of component k[h] (loaded when k changes) as what a round
  // reads: its slot and entry tables, prob_bits and slow_from, and where its coefficients go: without
  // classes the element index of symbol i itself (advanced by n_lanes tokens a round), with classes the
  // component's column (row0's row; the class's row list gives the token). Step, offset and alphabet
  // are read from the cell itself on the slow path.
  uint32_t t[2], k[2], loaded[2];
  const EcsqDeviceComponent* cell[2];
  const uint8_t* slot_base[2];
  const EcsqDeviceEntry* entry_base[2];
  uint32_t prob_bits[2], slow_from[2];
  uint64_t at_index[2];
  uint32_t run_rows[2] = {0, 0}, run_len[2] = {0, 0};  // run_len[h]: run_length(k[h]) once walked
  const uint32_t token_stride = job.token_stride, index_step = n_lanes * token_stride;
  const uint32_t k_end = 2 * job.c1;
  auto run_length = [&](uint32_t kk) -> uint32_t {
    const uint32_t j = kk >> 1;
    if ((kk & 1u) == 0)  // class 1 at the high level
      return j < job.high_n_kept && job.high_cells_before[j + 1] > job.high_cells_before[j] ? job.n_high : 0u;
    return j < job.n_kept && job.cells_before[j + 1] > job.cells_before[j] ? job.n_tokens - job.n_high : 0u;
  };
#pragma unroll
  for (int h = 0; h < KH; ++h) {
    const uint32_t l = uint32_t(h) * 32 + lane;
    loaded[h] = 0xffffffffu;
    if (by_class) {
      k[h] = 2 * job.c0;
      t[h] = l;
      while (k[h] < k_end && t[h] >= (run_len[h] = run_length(k[h]))) {
        t[h] -= run_len[h];
        ++k[h];
      }
    } else {
      k[h] = l / job.n_tokens;
      t[h] = l - k[h] * job.n_tokens;
    }
  }
  const uint32_t lanes_below = (1u << lane) - 1u;
  const bool store_f32 = coef_f32 != nullptr, store_bf16 = coef_bf16 != nullptr;
  uint32_t pos = 0;     // next word
  uint32_t at_bit = 0;  // next raw bit; at_bit <= n_raw, a 32-bit count, always holds
  for (uint32_t round = 0; round < n; round += n_lanes) {
#pragma unroll
    for (int h = 0; h < KH; ++h) {
      if (uint32_t(h) >= halves) break;  // warp-uniform
      // Symbol i = round + l exists for l < n_lanes and i < n: one compare with the round's lane count.
      const uint32_t l = uint32_t(h) * 32 + lane;
      const bool active = l < min(n_lanes, n - round);
      uint32_t x = h == 0 ? x0 : x1;
      uint32_t s = 0;
      float v = 0.0f;
      bool need = false, slow = false;
      if (active) {  // step 1-2 of the spec with symbol i's table
        if (loaded[h] != k[h]) {
          const uint8_t* slots = job.slots;
          const EcsqDeviceEntry* entries = job.entries;
          if (by_class) {  // i < n and the runs hold n symbols (checked by the host): k[h] < k_end
            const uint32_t j = k[h] >> 1;
            if ((k[h] & 1u) == 0) {
              cell[h] = job.high_cells + job.high_cells_before[j];
              slots = job.high_slots;
              entries = job.high_entries;
              run_rows[h] = 0;
            } else {
              cell[h] = job.cells + job.cells_before[j];
              run_rows[h] = job.n_high;
            }
          } else {
            cell[h] = job.cells + job.first_cell + k[h];
          }
          const EcsqDeviceComponent c = *cell[h];
          slot_base[h] = slots + c.slot_offset;
          entry_base[h] = entries + c.entry_offset;
          prob_bits[h] = c.prob_bits;
          slow_from[h] = c.slow_from;
          at_index[h] = uint64_t(job.row0 + (by_class ? 0u : t[h])) * token_stride +
                        uint64_t(c.component) * job.component_stride;
          loaded[h] = k[h];
          // The next component's tables and the next 1 KiB of words on their way to L1 while this
          // component decodes (n_tokens / n_lanes rounds): a chunk's components are consecutive
          // cells, and a fresh table would otherwise be fetched from L2 by the rounds that need it.
          if (!by_class && (k[h] + 1) * n_tokens < n) {
            const EcsqDeviceComponent& next = cell[h][1];
            const uint32_t at = lane * 128;
            if (at < (1u << next.prob_bits)) prefetch_l1(slots + next.slot_offset + at);
            if (at < uint32_t(next.alphabet) * uint32_t(sizeof(EcsqDeviceEntry)))
              prefetch_l1(reinterpret_cast<const uint8_t*>(entries + next.entry_offset) + at);
          }
          prefetch_l1(words + min(2 * pos + lane * 32, 2 * n_words));
        }
        const uint32_t slot = x & ((1u << prob_bits[h]) - 1u);
        s = slot_base[h][slot];
        const EcsqDeviceEntry e = entry_base[h][s];
        x = (e.freq_cum >> 16) * (x >> prob_bits[h]) + slot - (e.freq_cum & 0xffffu);
        need = x < kRansStateLow;
        slow = s >= slow_from[h];
        v = e.value;  // a direct symbol's coefficient; the slow path below computes the others'
      }
      const uint32_t need_mask = __ballot_sync(kFullMask, need);
      {  // step 3: words in lane order; past the end reads 0 and shows as pos > n_words
        const uint32_t w_at = pos + __popc(need_mask & lanes_below);
        uint32_t w = 0;
        if (need && w_at < n_words) w = uint32_t(words[2 * w_at]) | uint32_t(words[2 * w_at + 1]) << 8;
        if (need) x = x << 16 | w;
      }
      pos += __popc(need_mask);
      if (h == 0) x0 = x;
      else if (KH == 2) x1 = x;

      // Raw bits follow only the escape and bucket magnitudes (symbols from slow_from on), so nearly
      // every round skips this: escapes first, one at a time in lane order, then one prefix sum.
      if (__any_sync(kFullMask, slow)) {
        EcsqDeviceComponent c;  // read only where slow
        if (slow) c = *cell[h];
        const bool escaped = slow && s == uint32_t(c.alphabet) - 1u;
        uint32_t count = slow && !escaped ? bucket_bits(s) : 0u;
        for (uint32_t esc = __ballot_sync(kFullMask, escaped); esc != 0; esc &= esc - 1) {
          const uint32_t e = __ffs(esc) - 1;
          const uint32_t before = warp_inclusive_sum(count, lane) - count;
          uint32_t bad = 0;
          if (lane == e) {
            const uint64_t from = uint64_t(at_bit) + before;
            if (from + kEcsqEscapeBits > n_raw) {
              bad = kEcsqRawOverrun;
            } else {
              s = read_bits(raw, from, kEcsqEscapeBits);
              if (s < uint32_t(c.alphabet) - 1u || s >= uint32_t(kEcsqSignedSymbols)) bad = kEcsqBadEscape;
              else count = kEcsqEscapeBits + bucket_bits(s);
            }
          }
          bad = __shfl_sync(kFullMask, bad, int(e));
          if (bad != 0) return bad;
        }
        const uint32_t incl = warp_inclusive_sum(count, lane);
        bool overrun = false;
        if (slow) {
          const uint32_t nbits = escaped ? count - kEcsqEscapeBits : count;
          const uint64_t from = uint64_t(at_bit) + incl - nbits;  // the bucket bits come last
          uint32_t bucket = 0;
          if (nbits != 0) {
            if (from + nbits > n_raw) overrun = true;
            else bucket = read_bits(raw, from, nbits);
          }
          v = ecsq_dequantize(ecsq_code(s, bucket), c.step, c.delta);
        }
        if (__any_sync(kFullMask, overrun)) return kEcsqRawOverrun;
        at_bit += __shfl_sync(kFullMask, incl, 31);  // no overrun: still <= n_raw
      }
      if (active) {
        const uint64_t idx = by_class ? at_index[h] + uint64_t(rows[run_rows[h] + t[h]]) * token_stride : at_index[h];
        if (store_f32) coef_f32[idx] = v;
        if (store_bf16) coef_bf16[idx] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
        amax = fmaxf(amax, fabsf(v));
      }
      t[h] += n_lanes;  // symbol i + n_lanes
      if (!by_class) at_index[h] += index_step;  // recomputed where k changes
      if (by_class) {
        while (k[h] < k_end && t[h] >= run_len[h]) {  // run_len[h] is k[h]'s: cross into the next runs
          t[h] -= run_len[h];
          if (++k[h] < k_end) run_len[h] = run_length(k[h]);
        }
      } else if (t[h] >= n_tokens) {
        const uint32_t q = t[h] / n_tokens;
        k[h] += q;
        t[h] -= q * n_tokens;
      }
    }
  }
  if (pos > n_words) return kEcsqStreamOverrun;
  if (pos < n_words) return kEcsqStreamLeftover;
  if (__any_sync(kFullMask, x0 != kRansStateLow || x1 != kRansStateLow)) return kEcsqBadFinalState;
  if (at_bit != n_raw) return kEcsqRawLeftover;
  return kEcsqOk;
}

template <int KH, bool kByClass>
__global__ void __launch_bounds__(32 * kWarpsPerBlock, KH == 1 ? (kByClass ? 7 : 8) : 5)
    ecsq_decode_kernel(const EcsqDecodeJob* __restrict__ jobs, int n_jobs, bool verify_crc, uint32_t* __restrict__ status) {
  __shared__ uint32_t crc_table[256];
  if (verify_crc) {
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
      uint32_t v = i;
      for (int k = 0; k < 8; ++k) v = (v & 1) ? 0xedb88320u ^ (v >> 1) : v >> 1;
      crc_table[i] = v;
    }
    __syncthreads();
  }
  const int j = int(blockIdx.x) * kWarpsPerBlock + int(threadIdx.x / 32);
  if (j >= n_jobs) return;
  const uint32_t lane = threadIdx.x & 31;
  // The job in shared memory, not registers: its fields are read rarely (per chunk or component), and
  // the registers they would hold set the kernel's occupancy (128 registers: 16 warps per SM).
  __shared__ EcsqDecodeJob block_jobs[kWarpsPerBlock];
  EcsqDecodeJob& job = block_jobs[threadIdx.x / 32];
  static_assert(sizeof(EcsqDecodeJob) % 4 == 0);
  for (uint32_t w = lane; w < sizeof(EcsqDecodeJob) / 4; w += 32)
    reinterpret_cast<uint32_t*>(&job)[w] = reinterpret_cast<const uint32_t*>(jobs + j)[w];
  __syncwarp();
  float amax = 0.0f;
  const uint32_t st = decode_chunk<KH, kByClass>(job, verify_crc ? crc_table : nullptr, lane, amax);
  if (lane == 0) status[j] = st;
  if (job.abs_max != nullptr) {  // warp-uniform; a chunk that failed still merges what it stored
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, off));
    // Rounding is monotonic and symmetric: the largest bf16 magnitude is the largest fp32 one, rounded.
    if (job.coef_f32 == nullptr) amax = __bfloat162float(__float2bfloat16_rn(amax));
    if (lane == 0 && amax > 0.0f) atomicMax(reinterpret_cast<unsigned int*>(job.abs_max), __float_as_uint(amax));
  }
}

}  // namespace

const char* ecsq_decode_status_name(uint32_t status) {
  switch (status) {
    case kEcsqOk: return "ok";
    case kEcsqBadChecksum: return "checksum mismatch";
    case kEcsqBadHeader: return "malformed rANS chunk header or sizes";
    case kEcsqBadInitialState: return "a rANS lane starts below 2^16";
    case kEcsqStreamOverrun: return "the rANS stream ends before the last symbol";
    case kEcsqStreamLeftover: return "rANS stream words left after the last symbol";
    case kEcsqBadFinalState: return "a rANS lane does not end in its initial state";
    case kEcsqBadEscape: return "an escape to a symbol the table codes, or one no code has";
    case kEcsqRawOverrun: return "raw bits end inside an escape or a bucket";
    case kEcsqRawLeftover: return "raw bits left over, or raw bytes that do not match their count";
    case kEcsqBadPadding: return "nonzero padding bits";
    default: return "unknown ECSQ decode status";
  }
}

cudaError_t launch_ecsq_decode(const EcsqDecodeJob* jobs_dev, const int (&group_jobs)[kEcsqJobGroups], bool verify_crc,
                               uint32_t* status_dev, cudaStream_t stream) {
  using Kernel = void (*)(const EcsqDecodeJob*, int, bool, uint32_t*);
  const Kernel kernels[kEcsqJobGroups] = {ecsq_decode_kernel<1, false>, ecsq_decode_kernel<1, true>,
                                          ecsq_decode_kernel<2, false>, ecsq_decode_kernel<2, true>};
  int first = 0;
  for (int g = 0; g < kEcsqJobGroups; ++g) {
    const int n = group_jobs[g];
    if (n <= 0) continue;
    const int blocks = (n + kWarpsPerBlock - 1) / kWarpsPerBlock;
    kernels[g]<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(jobs_dev + first, n, verify_crc, status_dev + first);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    first += n;
  }
  return cudaSuccess;
}

}  // namespace kvtc::cuda
