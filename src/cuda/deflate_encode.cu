// GPU DEFLATE encoder: Huffman-only dynamic blocks or stored blocks, one thread block per stream.
//
// Every decision comes from cuda/huffman_deflate.hpp, the code the host mirror runs, so the bytes
// match it exactly. Per stream:
//   1. histogram: one private histogram per warp in shared memory (fewer atomic collisions), summed;
//   2. code: each thread ranks its symbols by (count, symbol) (a parallel sort with unique keys),
//      then thread 0 builds lengths, codes, the header plan and picks dynamic or stored;
//   3. dynamic: rounds of 256 tasks of 32 input bytes. Each thread counts its task's bits, a block
//      scan gives bit offsets, and each thread ORs its codes into a shared staging window (atomicOr
//      on 32-bit words: only the two edge words of a task are shared with neighbours). Complete
//      bytes go to dst; the last partial word is carried into the next round's window. A round's
//      output is at most 8 KiB x 15 bits, so the window never overflows, whatever the data;
//      stored: headers and bytes copied in parallel;
//   4. CRC-32: one segment of the output per thread, shifted by x^(8 * bytes after it) and XORed.
// dst is written only after the size check, and only [0, out_bytes).
#include "cuda/deflate_encode.cuh"

namespace kvtc::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kTaskBytes = 32;
constexpr uint32_t kRoundBytes = kThreads * kTaskBytes;
constexpr uint32_t kMaxHeaderBits = 17 + 3 * kCodeLenSymbols + kCodeLenSequence * (kMaxCodeLenBits + 7);
constexpr int kStageWords = 4096;
// Round 0 holds the header, a full round at the longest code length, and end-of-block.
static_assert((kMaxHeaderBits + 8 + kRoundBytes * kMaxLitBits + kMaxLitBits) / 32 + 2 <= kStageWords,
              "staging window too small for one round");

struct Shared {
  union {
    uint32_t warp_hist[kWarps][256];  // phase 1
    uint32_t stage[kStageWords];      // phase 3 (dynamic blocks)
  } u;
  uint32_t counts[kLitSymbols];
  uint32_t scratch[kLitSymbols];
  uint32_t sym[kLitSymbols];  // bit-reversed code | length << 16
  uint32_t crc_table[256];
  uint32_t warp_sums[kWarps];
  uint16_t sorted[kLitSymbols];
  DeflatePlan plan;
};

__device__ void add_bytes(uint32_t* hist, uint32_t word) {
#pragma unroll
  for (int k = 0; k < 4; ++k) atomicAdd(&hist[(word >> (8 * k)) & 255u], 1u);
}

// Adds src[0, n) into this warp's histogram; 16-byte loads for the aligned middle.
__device__ void histogram(const uint8_t* src, uint32_t n, uint32_t* hist) {
  const uint32_t misalign = uint32_t(reinterpret_cast<uintptr_t>(src) & 15u);
  const uint32_t head = min(n, (16u - misalign) & 15u);
  for (uint32_t i = threadIdx.x; i < head; i += kThreads) atomicAdd(&hist[src[i]], 1u);
  const uint4* vec = reinterpret_cast<const uint4*>(src + head);
  const uint32_t n_vec = (n - head) / 16;
  for (uint32_t i = threadIdx.x; i < n_vec; i += kThreads) {
    const uint4 v = __ldg(vec + i);
    add_bytes(hist, v.x);
    add_bytes(hist, v.y);
    add_bytes(hist, v.z);
    add_bytes(hist, v.w);
  }
  for (uint32_t i = head + n_vec * 16 + threadIdx.x; i < n; i += kThreads) atomicAdd(&hist[src[i]], 1u);
}

// Up to 32 bytes of one task into registers (little-endian words, zero past n_bytes).
__device__ void load_task(const uint8_t* p, uint32_t n_bytes, uint32_t (&w)[8]) {
  if (n_bytes == kTaskBytes && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(p));
    const uint4 b = __ldg(reinterpret_cast<const uint4*>(p) + 1);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) w[k] = 0;
#pragma unroll
  for (uint32_t i = 0; i < kTaskBytes; ++i)
    if (i < n_bytes) w[i >> 2] |= uint32_t(__ldg(p + i)) << (8 * (i & 3));
}

// Exclusive prefix sum of v over the block; *total gets the block's sum. Contains two barriers.
__device__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* warp_sums, uint32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t x = v;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  uint32_t before = 0, sum = 0;
  for (int w = 0; w < kWarps; ++w) {
    const uint32_t s = warp_sums[w];
    before += w < warp ? s : 0;
    sum += s;
  }
  __syncthreads();  // warp_sums is reused by the next call
  *total = sum;
  return before + x - v;
}

// One dynamic block; returns the number of bits written (the caller checks it against the plan).
__device__ uint64_t write_dynamic(Shared& sh, const DeflateEncodeJob& job) {
  const uint32_t tid = threadIdx.x;
  uint32_t* stage = sh.u.stage;
  uint8_t* stage_bytes = reinterpret_cast<uint8_t*>(stage);
  for (uint32_t i = tid; i < uint32_t(kLitSymbols); i += kThreads)
    sh.sym[i] = sh.plan.lit_codes[i] | uint32_t(sh.plan.lit_lengths[i]) << 16;
  for (uint32_t i = tid; i < uint32_t(kStageWords); i += kThreads) stage[i] = 0;
  __syncthreads();
  if (tid == 0) {  // the header starts the window; the first scan's barrier orders it before the literals
    BitWriter bw = make_bit_writer(stage_bytes, kStageWords * 4);
    deflate_write_dynamic_header(sh.plan, &bw);
    bw.align_to_byte();
  }
  const uint32_t n = job.src_bytes;
  const uint32_t n_tasks = n == 0 ? 1 : (n + kTaskBytes - 1) / kTaskBytes;  // the last also writes EOB
  const uint32_t n_rounds = (n_tasks + kThreads - 1) / kThreads;
  const uint32_t eob = sh.sym[kEndOfBlock];
  uint64_t round_bit = sh.plan.header_bits;  // absolute position of the round's first bit
  uint64_t window_word = 0;                  // absolute index of the word in stage[0]
  uint64_t written_bytes = 0;
  for (uint32_t r = 0; r < n_rounds; ++r) {
    const uint32_t task = r * kThreads + tid;
    const uint32_t begin = task * kTaskBytes;
    const uint32_t task_bytes = task < n_tasks ? min(kTaskBytes, n - begin) : 0;
    const bool has_eob = task == n_tasks - 1;
    uint32_t w[8];
    load_task(job.src + begin, task_bytes, w);
    uint32_t bits = has_eob ? eob >> 16 : 0;
#pragma unroll
    for (uint32_t k = 0; k < kTaskBytes; ++k)
      if (k < task_bytes) bits += sh.sym[(w[k >> 2] >> (8 * (k & 3))) & 255u] >> 16;
    uint32_t round_bits = 0;
    const uint32_t offset_bits = block_exclusive_scan(bits, sh.warp_sums, &round_bits);
    if (bits != 0) {
      const uint32_t rel = uint32_t(round_bit - window_word * 32) + offset_bits;
      uint32_t word = rel >> 5;
      int n_acc = int(rel & 31);
      uint64_t acc = 0;
      auto emit = [&](uint32_t entry) {
        acc |= uint64_t(entry & 0xffffu) << n_acc;
        n_acc += int(entry >> 16);
        if (n_acc >= 32) {
          atomicOr(&stage[word++], uint32_t(acc));
          acc >>= 32;
          n_acc -= 32;
        }
      };
#pragma unroll
      for (uint32_t k = 0; k < kTaskBytes; ++k)
        if (k < task_bytes) emit(sh.sym[(w[k >> 2] >> (8 * (k & 3))) & 255u]);
      if (has_eob) emit(eob);
      if (n_acc > 0) atomicOr(&stage[word], uint32_t(acc));
    }
    __syncthreads();
    const uint64_t end_bit = round_bit + round_bits;
    const uint64_t end_byte = r + 1 == n_rounds ? (end_bit + 7) / 8 : end_bit / 8;
    for (uint64_t b = written_bytes + tid; b < end_byte; b += kThreads) job.dst[b] = stage_bytes[b - window_word * 4];
    const uint64_t next_window = end_bit / 32;
    const uint32_t carry = stage[next_window - window_word];  // bits of the partial word, if any
    __syncthreads();
    for (uint32_t i = tid; i < uint32_t(kStageWords); i += kThreads) stage[i] = i == 0 ? carry : 0;
    written_bytes = end_byte;
    window_word = next_window;
    round_bit = end_bit;
  }
  return round_bit;
}

// Stored blocks: 5-byte headers and the input, copied in parallel.
__device__ void write_stored(const DeflateEncodeJob& job) {
  const uint32_t n = job.src_bytes;
  const uint32_t n_blocks = n == 0 ? 1 : (n + kMaxStoredBlockBytes - 1) / kMaxStoredBlockBytes;
  for (uint32_t b = threadIdx.x; b < n_blocks; b += kThreads) {
    const uint32_t first = b * kMaxStoredBlockBytes;
    const uint32_t len = min(kMaxStoredBlockBytes, n - first);
    uint8_t* h = job.dst + first + b * kStoredHeaderBytes;
    h[0] = b + 1 == n_blocks ? 1 : 0;  // BFINAL, BTYPE = 00
    h[1] = uint8_t(len);
    h[2] = uint8_t(len >> 8);
    h[3] = uint8_t(~len);
    h[4] = uint8_t(~len >> 8);
  }
  for (uint32_t i = threadIdx.x; i < n; i += kThreads)
    job.dst[i + (i / kMaxStoredBlockBytes + 1) * kStoredHeaderBytes] = job.src[i];
}

// zlib CRC-32 of p[0, n), written by this block before the preceding barrier. Valid in thread 0.
__device__ uint32_t block_crc32(Shared& sh, const uint8_t* p, uint32_t n) {
  const uint32_t seg = (n + kThreads - 1) / kThreads;
  const uint32_t a = min(n, threadIdx.x * seg), b = min(n, a + seg);
  uint32_t part = 0;
  if (b > a) part = crc32_mul_mod(crc32_x_pow_8n(n - b), crc32_raw_update(sh.crc_table, 0, p + a, b - a));
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) part ^= __shfl_xor_sync(0xffffffffu, part, d);
  if ((threadIdx.x & 31) == 0) sh.warp_sums[threadIdx.x >> 5] = part;
  __syncthreads();
  uint32_t raw = 0;
  for (int w = 0; w < kWarps; ++w) raw ^= sh.warp_sums[w];
  return crc32_finish(raw, n);
}

// At least 4 blocks per SM: caps registers at 64 (thread 0's plan code would otherwise take 100).
__global__ void __launch_bounds__(kThreads, 4)
    deflate_encode_kernel(const DeflateEncodeJob* jobs, uint32_t* out_bytes, uint32_t* out_crc, uint32_t* status) {
  __shared__ Shared sh;
  const DeflateEncodeJob job = jobs[blockIdx.x];
  const uint32_t tid = threadIdx.x;
  auto finish = [&](uint32_t code, uint32_t n_bytes, uint32_t crc) {
    if (tid != 0) return;
    status[blockIdx.x] = code;
    out_bytes[blockIdx.x] = code == kEncodeOk ? n_bytes : 0;
    out_crc[blockIdx.x] = code == kEncodeOk ? crc : 0;
  };
  if (job.src_bytes > kMaxEncodeInputBytes) return finish(kEncodeInputTooLarge, 0, 0);

  sh.crc_table[tid] = crc32_table_entry(tid);
  for (uint32_t i = tid; i < uint32_t(kWarps * 256); i += kThreads) (&sh.u.warp_hist[0][0])[i] = 0;
  __syncthreads();
  histogram(job.src, job.src_bytes, sh.u.warp_hist[tid / 32]);
  __syncthreads();
  uint32_t count = 0;
  for (int w = 0; w < kWarps; ++w) count += sh.u.warp_hist[w][tid];
  sh.counts[tid] = count;
  if (tid == 0) sh.counts[kEndOfBlock] = 1;
  const int n_used = __syncthreads_count(count != 0) + 1;  // + end-of-block

  for (uint32_t s = tid; s < uint32_t(kLitSymbols); s += kThreads) {
    const int rank = huffman_rank(sh.counts, kLitSymbols, int(s));
    if (rank >= 0) sh.sorted[rank] = uint16_t(s);
  }
  __syncthreads();
  if (tid == 0) {
    huffman_lengths_from_sorted(sh.counts, sh.sorted, n_used, kLitSymbols, kMaxLitBits, sh.scratch,
                                sh.plan.lit_lengths);
    deflate_plan_finish(sh.counts, job.src_bytes, &sh.plan);
  }
  __syncthreads();
  const uint64_t total_bytes = sh.plan.out_bytes;
  if (total_bytes > job.dst_capacity) return finish(kEncodeOverflow, 0, 0);

  bool consistent = true;
  if (sh.plan.use_stored)
    write_stored(job);
  else
    consistent = write_dynamic(sh, job) == sh.plan.header_bits + sh.plan.body_bits;
  __syncthreads();
  const uint32_t crc = block_crc32(sh, job.dst, uint32_t(total_bytes));
  finish(consistent ? kEncodeOk : kEncodeInternal, uint32_t(total_bytes), crc);
}

}  // namespace

cudaError_t launch_deflate_encode(const DeflateEncodeJob* jobs_dev, int n_jobs, uint32_t* out_bytes_dev,
                                  uint32_t* out_crc_dev, uint32_t* status_dev, cudaStream_t stream) {
  if (n_jobs < 0 || (n_jobs > 0 && (!jobs_dev || !out_bytes_dev || !out_crc_dev || !status_dev)))
    return cudaErrorInvalidValue;
  if (n_jobs == 0) return cudaSuccess;
  deflate_encode_kernel<<<n_jobs, kThreads, 0, stream>>>(jobs_dev, out_bytes_dev, out_crc_dev, status_dev);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
