// GPU inflate: raw DEFLATE (RFC 1951) with stored, fixed and dynamic Huffman blocks.
//
// One warp per stream, all 32 lanes running the same decode loop on the same bits (the loop is
// warp-uniform, so this costs what one lane would and needs no broadcasts). What is parallel is split
// across the lanes: filling decode tables, copying back-references and stored blocks (lane i writes
// bytes i, i + 32, ...; a match of distance d reads byte (i mod d) of the d bytes before it, so even
// overlapping matches copy in one parallel step with no read-after-write chain), and the CRC (each
// lane one segment, combined with the GF(2) shift operator as zlib's crc32_combine). Throughput comes
// from batching: a launch holds every chunk of every stream, layer and sequence. Decode tables live in
// shared memory: a 10-bit (literal/length) and 8-bit (distance) first-level table, with a canonical
// bit-by-bit walk for the rare longer codes (puff.c's method), so no second-level tables are needed.
//
// Validation follows libdeflate's decoder, so that the two accept exactly the same streams:
// oversubscribed or (with libdeflate's two exceptions) incomplete code sets, a repeat code with no
// previous length, back-references before the output start, output past dst_bytes, input past
// src_bytes, and trailing bytes after the final block all end the stream with a status.
#include "entropy/inflate.cuh"

#include "util/crc32.cuh"

namespace kvtc::cuda {

namespace {

constexpr int kLitTableBits = 10;
constexpr int kDistTableBits = 8;
constexpr int kCodeLenTableBits = 7;

// Symbols 286/287 and distances 30/31 never occur in valid streams; they decode as libdeflate
// decodes them (length 258; distance base 24577 with 13 extra bits), so that both decoders accept
// and reject exactly the same inputs.
__constant__ uint16_t kLenBase[31] = {3,  4,  5,  6,  7,  8,  9,  10,  11,  13,  15,  17,  19,  23,  27, 31,
                                      35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258, 258, 258};
__constant__ uint8_t kLenExtra[31] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                      3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0, 0, 0};
__constant__ uint16_t kDistBase[32] = {1,    2,    3,    4,    5,    7,     9,     13,    17,    25,   33,
                                       49,   65,   97,   129,  193,  257,   385,   513,   769,   1025, 1537,
                                       2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577, 24577, 24577};
__constant__ uint8_t kDistExtra[32] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                       7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 13, 13};
__constant__ uint8_t kCodeLenOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

struct Shared {
  uint16_t lit_table[1 << kLitTableBits];
  uint16_t dist_table[1 << kDistTableBits];
  uint16_t lit_sorted[288];
  uint16_t dist_sorted[32];
  uint16_t lit_count[16];
  uint16_t dist_count[16];
  uint8_t lengths[320];
  uint32_t crc_table[256];
};

// LSB-first bit reader. Bytes past the end read as zero; `pos` keeps counting them so that the
// consumed bit count tells an overrun apart from a clean end.
struct BitReader {
  const uint8_t* p;
  uint32_t n;
  uint32_t pos;
  uint64_t buf;
  int cnt;

  // Leaves at least 33 bits buffered: four independent byte loads per refill.
  __device__ void refill() {
    if (cnt > 32) return;
    uint32_t w = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (pos + k < n) w |= uint32_t(__ldg(p + pos + k)) << (8 * k);
    buf |= uint64_t(w) << cnt;
    cnt += 32;
    pos += 4;
  }
  __device__ uint32_t take(int k) {
    if (cnt < k) refill();
    const uint32_t v = uint32_t(buf & ((uint64_t(1) << k) - 1));
    buf >>= k;
    cnt -= k;
    return v;
  }
  __device__ void consume(int k) {
    buf >>= k;
    cnt -= k;
  }
  __device__ uint64_t consumed_bits() const { return uint64_t(pos) * 8 - uint64_t(cnt); }
  __device__ bool overran() const { return consumed_bits() > uint64_t(n) * 8; }
};

// Canonical Huffman table from code lengths (at most max_len bits). Entries: (symbol << 4) | length;
// 0 marks "a code longer than table_bits starts here" (decoded by the canonical walk). Code sets are
// judged as libdeflate judges them: oversubscribed is invalid; incomplete is invalid except for the
// empty set (every code reads as symbol 0, one bit) and a single one-bit code (both bit values read
// as that symbol).
// Called by all lanes of the warp with the same arguments; lanes share the table fill.
__device__ bool build_table(const uint8_t* lengths, int n_syms, uint16_t* table, int table_bits, int max_len,
                            uint16_t* count, uint16_t* sorted) {
  const int lane = int(threadIdx.x & 31);
  __syncwarp();  // earlier readers of these tables are done
  // Counts in registers (every lane computes the same ones; a shared read-modify-write by 32 lanes
  // would race), then stored for the slow decoding path.
  uint16_t cnt[16];
#pragma unroll
  for (int l = 0; l < 16; ++l) cnt[l] = 0;
  for (int s = 0; s < n_syms; ++s) cnt[lengths[s]]++;
  cnt[0] = 0;
  // Shared tables are written by lane 0 alone (or lane-strided): lanes never write the same address
  // and are read only after the __syncwarp() at the end (compute-sanitizer racecheck clean).
  if (lane == 0)
    for (int l = 0; l < 16; ++l) count[l] = cnt[l];
  uint32_t used = 0;  // codespace used, in units of 2^-max_len
  for (int l = 1; l <= max_len; ++l) used = (used << 1) + cnt[l];
  const int size = 1 << table_bits;
  if (used > (1u << max_len)) return false;
  if (used < (1u << max_len)) {
    uint16_t entry;
    if (used == 0) {
      entry = uint16_t((0 << 4) | 1);
    } else {
      if (used != (1u << (max_len - 1)) || cnt[1] != 1) return false;
      int sym = 0;
      while (lengths[sym] != 1) ++sym;
      entry = uint16_t((sym << 4) | 1);
    }
    for (int i = lane; i < size; i += 32) table[i] = entry;
    __syncwarp();
    return true;
  }
  uint16_t offs[16];
  offs[1] = 0;
  for (int l = 1; l < 15; ++l) offs[l + 1] = uint16_t(offs[l] + cnt[l]);
  if (lane == 0)
    for (int s = 0; s < n_syms; ++s)
      if (lengths[s]) sorted[offs[lengths[s]]++] = uint16_t(s);
  for (int i = lane; i < size; i += 32) table[i] = 0;
  __syncwarp();
  int code = 0, idx = 0;
  for (int l = 1; l <= table_bits; ++l) {
    for (int c = 0; c < cnt[l]; ++c) {
      const uint16_t entry = uint16_t((sorted[idx++] << 4) | l);
      const int rev = int(__brev(uint32_t(code)) >> (32 - l));
      for (int r = rev + (lane << l); r < size; r += 32 << l) table[r] = entry;
      ++code;
    }
    code <<= 1;
  }
  __syncwarp();
  return true;
}

// Decodes one symbol; -1 when the bits are no code of the set.
__device__ int decode_symbol(BitReader& br, const uint16_t* table, int table_bits, const uint16_t* count,
                             const uint16_t* sorted) {
  br.refill();
  const uint16_t e = table[br.buf & ((1u << table_bits) - 1)];
  if (e) {
    br.consume(e & 15);
    return e >> 4;
  }
  int code = 0, first = 0, index = 0;
  uint64_t b = br.buf;
  for (int len = 1; len <= 15; ++len) {
    code |= int(b & 1);
    b >>= 1;
    const int c = count[len];
    if (code - c < first) {
      br.consume(len);
      return sorted[index + (code - first)];
    }
    index += c;
    first = (first + c) << 1;
    code <<= 1;
  }
  return -1;
}

__device__ uint32_t read_dynamic_header(BitReader& br, Shared& sh) {
  const int hlit = int(br.take(5)) + 257;
  const int hdist = int(br.take(5)) + 1;
  const int hclen = int(br.take(4)) + 4;
  uint8_t cl_lengths[19];
  for (int i = 0; i < 19; ++i) cl_lengths[i] = 0;
  for (int i = 0; i < hclen; ++i) cl_lengths[kCodeLenOrder[i]] = uint8_t(br.take(3));
  // The code-length code uses the literal table's storage until the real tables are built.
  if (!build_table(cl_lengths, 19, sh.lit_table, kCodeLenTableBits, 7, sh.lit_count, sh.lit_sorted))
    return kInflateBadCodeSet;
  const int total = hlit + hdist;
  const bool writer = (threadIdx.x & 31) == 0;  // lane 0 writes the lengths; build_table syncs the warp
  int i = 0;
  uint8_t prev = 0;  // the last length written, for repeat code 16 (lanes never read lengths[] back here)
  while (i < total) {
    if (br.overran()) return kInflateInputOverrun;
    const int sym = decode_symbol(br, sh.lit_table, kCodeLenTableBits, sh.lit_count, sh.lit_sorted);
    if (sym < 0) return kInflateBadCodeSet;
    if (sym < 16) {
      prev = uint8_t(sym);
      if (writer) sh.lengths[i] = prev;
      ++i;
      continue;
    }
    int rep;
    uint8_t value = 0;
    if (sym == 16) {
      if (i == 0) return kInflateBadCodeSet;
      value = prev;
      rep = 3 + int(br.take(2));
    } else if (sym == 17) {
      rep = 3 + int(br.take(3));
    } else {
      rep = 11 + int(br.take(7));
    }
    // A repeat past the end is not an error (libdeflate ignores the excess).
    for (int r = 0; r < rep && i < total; ++r, ++i)
      if (writer) sh.lengths[i] = value;
    prev = value;
  }
  if (!build_table(sh.lengths + hlit, hdist, sh.dist_table, kDistTableBits, 15, sh.dist_count, sh.dist_sorted))
    return kInflateBadCodeSet;
  if (!build_table(sh.lengths, hlit, sh.lit_table, kLitTableBits, 15, sh.lit_count, sh.lit_sorted))
    return kInflateBadCodeSet;
  return kInflateOk;
}

__device__ void build_fixed_tables(Shared& sh) {
  // Lane-strided: build_table's first __syncwarp() orders these writes before its reads.
  for (int i = int(threadIdx.x & 31); i < 320; i += 32)
    sh.lengths[i] = uint8_t(i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : i < 288 ? 8 : 5);
  build_table(sh.lengths, 288, sh.lit_table, kLitTableBits, 15, sh.lit_count, sh.lit_sorted);
  build_table(sh.lengths + 288, 32, sh.dist_table, kDistTableBits, 15, sh.dist_count, sh.dist_sorted);
}

// The whole bit stream of one job, run by all lanes of the warp in step (see the file comment).
__device__ uint32_t inflate_one(const InflateJob& job, Shared& sh) {
  BitReader br{job.src, job.src_bytes, 0, 0, 0};
  uint8_t* dst = job.dst;
  const uint32_t cap = job.dst_bytes;
  uint32_t out = 0;
  bool final_block = false;
  while (!final_block) {
    br.refill();
    if (br.overran()) return kInflateInputOverrun;
    final_block = br.take(1) != 0;
    const uint32_t type = br.take(2);
    if (type == 0) {
      br.consume(br.cnt & 7);  // to a byte boundary
      const uint32_t len = br.take(16);
      const uint32_t nlen = br.take(16);
      if ((len ^ 0xffffu) != nlen) return kInflateBadBlockType;
      // Return the whole bytes still buffered to the input, then copy straight from it.
      const uint32_t at = br.pos - uint32_t(br.cnt >> 3);
      if (uint64_t(at) + len > br.n) return kInflateInputOverrun;
      if (uint64_t(out) + len > cap) return kInflateOutputOverrun;
      for (uint32_t k = threadIdx.x & 31; k < len; k += 32) dst[out + k] = __ldg(br.p + at + k);
      out += len;
      br.pos = at + len;
      br.buf = 0;
      br.cnt = 0;
      continue;
    }
    if (type == 3) return kInflateBadBlockType;
    if (type == 1) {
      build_fixed_tables(sh);
    } else {
      const uint32_t st = read_dynamic_header(br, sh);
      if (st != kInflateOk) return st;
    }
    for (;;) {
      if (br.pos > br.n + 16) return kInflateInputOverrun;
      const int sym = decode_symbol(br, sh.lit_table, kLitTableBits, sh.lit_count, sh.lit_sorted);
      if (sym < 0) return kInflateBadSymbol;
      if (sym < 256) {
        if (out >= cap) return kInflateOutputOverrun;
        if ((threadIdx.x & 31) == 0) dst[out] = uint8_t(sym);
        ++out;
        continue;
      }
      if (sym == 256) break;
      const int ls = sym - 257;
      if (ls >= 31) return kInflateBadSymbol;
      const uint32_t len = kLenBase[ls] + br.take(kLenExtra[ls]);
      const int ds = decode_symbol(br, sh.dist_table, kDistTableBits, sh.dist_count, sh.dist_sorted);
      if (ds < 0 || ds >= 32) return kInflateBadSymbol;
      const uint32_t dist = kDistBase[ds] + br.take(kDistExtra[ds]);
      if (dist > out) return kInflateBadDistance;
      if (out + len > cap) return kInflateOutputOverrun;
      // Byte k of the match is byte (k mod dist) of the dist bytes before it: every source byte was
      // written before this match, so the lanes copy in parallel.
      __syncwarp();
      const uint8_t* from = dst + out - dist;
      for (uint32_t k = threadIdx.x & 31; k < len; k += 32) dst[out + k] = from[k < dist ? k : k % dist];
      out += len;
    }
  }
  if (br.overran()) return kInflateInputOverrun;
  if ((br.consumed_bits() + 7) / 8 != br.n) return kInflateTrailingInput;
  if (out != cap) return kInflateOutputShort;
  return kInflateOk;
}

__global__ void __launch_bounds__(32) inflate_kernel(const InflateJob* __restrict__ jobs, int n_jobs, bool verify_crc,
                                                     uint32_t* __restrict__ status) {
  __shared__ Shared sh;
  const int j = blockIdx.x;
  if (j >= n_jobs) return;
  const InflateJob job = jobs[j];
  uint32_t st = kInflateOk;
  if (verify_crc) {
    fill_crc32_table(sh.crc_table);
    if (warp_crc32(job.src, job.src_bytes, sh.crc_table) != job.crc32) st = kInflateBadChecksum;
  }
  if (st == kInflateOk) st = inflate_one(job, sh);
  if (threadIdx.x == 0) status[j] = st;
}

}  // namespace

const char* inflate_status_name(uint32_t status) {
  switch (status) {
    case kInflateOk: return "ok";
    case kInflateBadBlockType: return "invalid block type or stored length";
    case kInflateBadCodeSet: return "invalid Huffman code lengths";
    case kInflateBadSymbol: return "invalid Huffman code or symbol";
    case kInflateBadDistance: return "back-reference before the start of the output";
    case kInflateOutputOverrun: return "inflates to more than its recorded size";
    case kInflateOutputShort: return "inflates to fewer bytes than recorded";
    case kInflateInputOverrun: return "stream truncated";
    case kInflateTrailingInput: return "bytes after the final block";
    case kInflateBadChecksum: return "checksum mismatch";
    default: return "unknown inflate status";
  }
}

cudaError_t launch_inflate(const InflateJob* jobs_dev, int n_jobs, bool verify_crc, uint32_t* status_dev,
                           cudaStream_t stream) {
  if (n_jobs <= 0) return cudaSuccess;
  inflate_kernel<<<n_jobs, 32, 0, stream>>>(jobs_dev, n_jobs, verify_crc, status_dev);
  return cudaGetLastError();
}

}  // namespace kvtc::cuda
