// Huffman-only raw DEFLATE (RFC 1951) encoding, one code shared by the host and the GPU.
//
// kvtc stores every chunk as a raw DEFLATE stream that plain zlib inflates (docs/FORMAT.md, section
// 4). Quantised coefficients have no useful LZ77 matches, so this encoder writes literals only:
//   - one final dynamic-Huffman block (BTYPE=10): HLIT=257 (literals + end-of-block), HDIST=1 with
//     the single distance code length 0 ("no distance codes", RFC 1951 3.2.7), HCLEN code-length
//     code lengths, the 258 code lengths run-length coded with symbols 16/17/18, the literals, EOB;
//   - or, when that would not be smaller, stored blocks (BTYPE=00) of at most 65535 bytes each.
//   Empty input gives one empty final stored block (5 bytes).
//
// Determinism is the contract: the GPU kernel (cuda/deflate_encode.cu) and the host mirror
// (deflate_encode_host below) produce byte-identical streams for the same input, because every
// decision (code lengths, run-length coding, block type) is made by the functions in this file,
// which compile for both sides (KVTC_HD). Code construction: used symbols sorted by (count, symbol)
// ascending (a rank that each GPU thread computes for its own symbol), Moffat-Katajainen in-place
// minimum-redundancy lengths, then lengths above the limit folded to the limit and the Kraft sum
// restored by splitting shorter codes (the classic heuristic). Every code is complete (Kraft
// equality): a code with one used symbol gets a second, unused one, both of length 1.
//
// No CUDA headers, no allocation, no std containers: fixed-size arrays only. Sizes: inputs of at most
// kMaxEncodeInputBytes (2^28, the format's chunk limit); bit positions are 64-bit.
#pragma once

#include <cstdint>

#include "format/hd.hpp"  // KVTC_HD

namespace kvtc::cuda {

constexpr int kLitSymbols = 257;  // literals 0..255 and end-of-block
constexpr int kEndOfBlock = 256;
constexpr int kMaxLitBits = 15;
constexpr int kCodeLenSymbols = 19;
constexpr int kMaxCodeLenBits = 7;
constexpr int kCodeLenSequence = kLitSymbols + 1;  // 257 literal/length lengths + 1 distance length
constexpr uint32_t kMaxStoredBlockBytes = 65535;
constexpr uint32_t kStoredHeaderBytes = 5;  // 3 header bits padded to a byte, LEN, NLEN
constexpr uint32_t kMaxEncodeInputBytes = 1u << 28;

// Per-stream result codes (host mirror and device status array).
enum DeflateEncodeStatus : uint32_t {
  kEncodeOk = 0,
  kEncodeOverflow = 1,        // dst_capacity is smaller than the stream; nothing was written
  kEncodeInputTooLarge = 2,   // src_bytes > kMaxEncodeInputBytes
  kEncodeInternal = 3,        // the written size disagrees with the plan (a bug)
};

// Size of the stored-block encoding of n bytes: 5 header bytes per block of up to 65535 bytes.
KVTC_HD inline uint64_t deflate_stored_bytes(uint64_t n_bytes) {
  const uint64_t n_blocks = n_bytes == 0 ? 1 : (n_bytes + kMaxStoredBlockBytes - 1) / kMaxStoredBlockBytes;
  return n_bytes + kStoredHeaderBytes * n_blocks;
}

// Worst-case stream size for src_bytes of input: the encoder never writes more than the stored
// encoding, so a destination of this many bytes never overflows. Allocate this much per job.
KVTC_HD inline uint64_t deflate_encode_bound(uint64_t src_bytes) { return deflate_stored_bytes(src_bytes); }

// ---------------------------------------------------------------------------------------------
// Bit writer: LSB-first (DEFLATE's order) into dst[0, capacity_bytes). A byte past the capacity is
// not written; `overflow` is set and pos_bytes keeps counting, so the caller learns the needed size.

struct BitWriter {
  uint8_t* dst;
  uint64_t capacity_bytes;
  uint64_t pos_bytes;  // whole bytes emitted (written or, past the capacity, counted)
  uint64_t acc;        // pending bits, n_acc < 8 between calls
  int n_acc;
  bool overflow;

  KVTC_HD void put_byte(uint8_t b) {
    if (pos_bytes < capacity_bytes)
      dst[pos_bytes] = b;
    else
      overflow = true;
    ++pos_bytes;
  }
  // Appends the n_bits (0..32) low bits of `bits`.
  KVTC_HD void put(uint32_t bits, int n_bits) {
    acc |= uint64_t(bits) << n_acc;
    n_acc += n_bits;
    while (n_acc >= 8) {
      put_byte(uint8_t(acc));
      acc >>= 8;
      n_acc -= 8;
    }
  }
  // Pads the pending bits with zeros to a byte boundary.
  KVTC_HD void align_to_byte() {
    if (n_acc > 0) put_byte(uint8_t(acc));
    acc = 0;
    n_acc = 0;
  }
  KVTC_HD uint64_t bits_written() const { return pos_bytes * 8 + uint64_t(n_acc); }
};

KVTC_HD inline BitWriter make_bit_writer(uint8_t* dst, uint64_t capacity_bytes) {
  return BitWriter{dst, capacity_bytes, 0, 0, 0, false};
}

// ---------------------------------------------------------------------------------------------
// Huffman code construction.

// Rank of `symbol` among the used symbols (count > 0) ordered by (count, symbol) ascending; -1 when
// unused. Keys are unique, so ranks form a permutation: a GPU block computes all ranks in parallel
// and gets the same order as a sequential sort.
KVTC_HD inline int huffman_rank(const uint32_t* counts, int n_symbols, int symbol) {
  const uint32_t c = counts[symbol];
  if (c == 0) return -1;
  int rank = 0;
  for (int j = 0; j < n_symbols; ++j) {
    const uint32_t cj = counts[j];
    rank += (cj != 0 && (cj < c || (cj == c && j < symbol))) ? 1 : 0;
  }
  return rank;
}

// Moffat & Katajainen (1995), in place: w[0, n) holds weights in ascending order (n >= 2); on return
// w[i] is the optimal (unlimited) code length of the i-th lightest symbol. Weights sum below 2^32.
KVTC_HD inline void huffman_depths_in_place(uint32_t* w, int n) {
  // Pass 1: build the tree; internal node k keeps its weight, later the index of its parent.
  w[0] += w[1];
  int root = 0, leaf = 2;
  for (int next = 1; next < n - 1; ++next) {
    if (leaf >= n || w[root] < w[leaf]) {
      w[next] = w[root];
      w[root++] = uint32_t(next);
    } else {
      w[next] = w[leaf++];
    }
    if (leaf >= n || (root < next && w[root] < w[leaf])) {
      w[next] += w[root];
      w[root++] = uint32_t(next);
    } else {
      w[next] += w[leaf++];
    }
  }
  // Pass 2: parent indices to depths of internal nodes.
  w[n - 2] = 0;
  for (int next = n - 3; next >= 0; --next) w[next] = w[w[next]] + 1;
  // Pass 3: internal depths to leaf depths, deepest leaves first (the lightest).
  int available = 1, used = 0, next = n - 1;
  root = n - 2;
  for (uint32_t depth = 0; available > 0; ++depth) {
    while (root >= 0 && w[root] == depth) {
      ++used;
      --root;
    }
    while (available > used) {
      w[next--] = depth;
      --available;
    }
    available = 2 * used;
    used = 0;
  }
}

// Code lengths for n_symbols symbols, given the used ones sorted by (count, symbol) ascending
// (sorted[0, n_used)). Lengths are at most max_bits (<= 15) and form a complete code. scratch holds
// n_used words. lengths[0, n_symbols) is fully written (0 for unused symbols).
KVTC_HD inline void huffman_lengths_from_sorted(const uint32_t* counts, const uint16_t* sorted, int n_used,
                                                int n_symbols, int max_bits, uint32_t* scratch, uint8_t* lengths) {
  for (int s = 0; s < n_symbols; ++s) lengths[s] = 0;
  if (n_used == 0) return;
  if (n_used == 1) {  // a one-symbol code would be incomplete: pair it with symbol 0 (or 1)
    lengths[sorted[0]] = 1;
    lengths[sorted[0] == 0 ? 1 : 0] = 1;
    return;
  }
  for (int i = 0; i < n_used; ++i) scratch[i] = counts[sorted[i]];
  huffman_depths_in_place(scratch, n_used);
  uint32_t n_codes[16] = {};  // codes per length, lengths above max_bits folded into max_bits
  for (int i = 0; i < n_used; ++i) ++n_codes[scratch[i] < uint32_t(max_bits) ? scratch[i] : uint32_t(max_bits)];
  // Folding made the Kraft sum exceed 1 (in units of 2^-max_bits: exceed 2^max_bits). Each step
  // moves one code off the longest length and splits a shorter code in two, lowering the sum by one.
  uint32_t kraft = 0;
  for (int len = 1; len <= max_bits; ++len) kraft += n_codes[len] << (max_bits - len);
  while (kraft > (1u << max_bits)) {
    --n_codes[max_bits];
    for (int len = max_bits - 1; len > 0; --len)
      if (n_codes[len] != 0) {
        --n_codes[len];
        n_codes[len + 1] += 2;
        break;
      }
    --kraft;
  }
  // Shortest lengths to the most frequent symbols (the end of `sorted`).
  int j = n_used;
  for (int len = 1; len <= max_bits; ++len)
    for (uint32_t k = 0; k < n_codes[len]; ++k) lengths[sorted[--j]] = uint8_t(len);
}

// The sequential path: ranks, then huffman_lengths_from_sorted. kMaxSymbols >= n_symbols.
template <int kMaxSymbols>
KVTC_HD inline void huffman_build_lengths(const uint32_t* counts, int n_symbols, int max_bits, uint8_t* lengths) {
  uint16_t sorted[kMaxSymbols];
  uint32_t scratch[kMaxSymbols];
  int n_used = 0;
  for (int s = 0; s < n_symbols; ++s) {
    const int r = huffman_rank(counts, n_symbols, s);
    if (r >= 0) {
      sorted[r] = uint16_t(s);
      ++n_used;
    }
  }
  huffman_lengths_from_sorted(counts, sorted, n_used, n_symbols, max_bits, scratch, lengths);
}

KVTC_HD inline uint32_t reverse_bits(uint32_t v, int n_bits) {
  uint32_t r = 0;
  for (int i = 0; i < n_bits; ++i, v >>= 1) r = (r << 1) | (v & 1u);
  return r;
}

// Canonical codes (RFC 1951 3.2.2), bit-reversed so that an LSB-first writer emits them MSB first.
KVTC_HD inline void huffman_codes(const uint8_t* lengths, int n_symbols, int max_bits, uint16_t* codes) {
  uint32_t n_codes[16] = {};
  for (int s = 0; s < n_symbols; ++s) ++n_codes[lengths[s]];
  n_codes[0] = 0;
  uint32_t next_code[16] = {};
  uint32_t code = 0;
  for (int len = 1; len <= max_bits; ++len) {
    code = (code + n_codes[len - 1]) << 1;
    next_code[len] = code;
  }
  for (int s = 0; s < n_symbols; ++s)
    codes[s] = lengths[s] ? uint16_t(reverse_bits(next_code[lengths[s]]++, lengths[s])) : uint16_t(0);
}

// ---------------------------------------------------------------------------------------------
// The block plan: every decision about one stream, made from its histogram alone.

struct DeflatePlan {                       // no initialisers: lives in GPU shared memory
  uint8_t lit_lengths[kLitSymbols];
  uint16_t lit_codes[kLitSymbols];         // bit-reversed
  uint8_t cl_lengths[kCodeLenSymbols];     // the code-length code
  uint16_t cl_codes[kCodeLenSymbols];      // bit-reversed
  uint16_t rle[kCodeLenSequence];          // code-length symbol (low 5 bits) | repeat extra value << 5
  uint16_t n_rle;
  uint8_t n_cl;                            // code-length code lengths sent (HCLEN + 4)
  uint8_t use_stored;                      // 1: stored blocks; 0: one dynamic block
  uint64_t header_bits;                    // dynamic block: from BFINAL through the last code length
  uint64_t body_bits;                      // dynamic block: literals and end-of-block
  uint64_t out_bytes;                      // the stream's size in the chosen encoding
};

// Order in which code-length code lengths are sent (RFC 1951 3.2.7).
KVTC_HD inline int code_length_order(int i) {
  const uint8_t kOrder[kCodeLenSymbols] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  return kOrder[i];
}

KVTC_HD inline int code_length_extra_bits(int symbol) { return symbol == 16 ? 2 : symbol == 17 ? 3 : symbol == 18 ? 7 : 0; }

// Completes a plan whose lit_lengths are set: codes, run-length coded lengths, the code-length
// code, sizes and the block type. counts[0, 257): literal counts, counts[256] == 1 (end-of-block).
KVTC_HD inline void deflate_plan_finish(const uint32_t* counts, uint64_t src_bytes, DeflatePlan* plan) {
  huffman_codes(plan->lit_lengths, kLitSymbols, kMaxLitBits, plan->lit_codes);

  // Run-length code the 257 literal/length lengths followed by the one distance length (0), as
  // one sequence (runs may cross from one to the other).
  int n_rle = 0;
  for (int i = 0; i < kCodeLenSequence;) {
    const int v = i < kLitSymbols ? plan->lit_lengths[i] : 0;
    int run = 1;
    while (i + run < kCodeLenSequence && (i + run < kLitSymbols ? plan->lit_lengths[i + run] : 0) == v) ++run;
    i += run;
    if (v == 0) {
      while (run >= 11) {
        const int r = run < 138 ? run : 138;
        plan->rle[n_rle++] = uint16_t(18 | (r - 11) << 5);
        run -= r;
      }
      if (run >= 3) {
        plan->rle[n_rle++] = uint16_t(17 | (run - 3) << 5);
        run = 0;
      }
    } else {
      plan->rle[n_rle++] = uint16_t(v);
      --run;
      while (run >= 3) {
        const int r = run < 6 ? run : 6;
        plan->rle[n_rle++] = uint16_t(16 | (r - 3) << 5);
        run -= r;
      }
    }
    for (; run > 0; --run) plan->rle[n_rle++] = uint16_t(v);
  }
  plan->n_rle = uint16_t(n_rle);

  uint32_t cl_counts[kCodeLenSymbols] = {};
  for (int i = 0; i < n_rle; ++i) ++cl_counts[plan->rle[i] & 31];
  huffman_build_lengths<kCodeLenSymbols>(cl_counts, kCodeLenSymbols, kMaxCodeLenBits, plan->cl_lengths);
  huffman_codes(plan->cl_lengths, kCodeLenSymbols, kMaxCodeLenBits, plan->cl_codes);
  int n_cl = kCodeLenSymbols;
  while (n_cl > 4 && plan->cl_lengths[code_length_order(n_cl - 1)] == 0) --n_cl;
  plan->n_cl = uint8_t(n_cl);

  uint64_t header_bits = 3 + 5 + 5 + 4 + 3 * uint64_t(n_cl);
  for (int s = 0; s < kCodeLenSymbols; ++s)
    header_bits += uint64_t(cl_counts[s]) * uint64_t(plan->cl_lengths[s] + code_length_extra_bits(s));
  uint64_t body_bits = plan->lit_lengths[kEndOfBlock];
  for (int s = 0; s < 256; ++s) body_bits += uint64_t(counts[s]) * plan->lit_lengths[s];
  plan->header_bits = header_bits;
  plan->body_bits = body_bits;
  const uint64_t dynamic_bytes = (header_bits + body_bits + 7) / 8;
  const uint64_t stored_bytes = deflate_stored_bytes(src_bytes);
  plan->use_stored = dynamic_bytes >= stored_bytes ? 1 : 0;
  plan->out_bytes = plan->use_stored ? stored_bytes : dynamic_bytes;
}

// The whole plan from a histogram (sequential code construction). counts[256] must be 1.
KVTC_HD inline void deflate_plan_build(const uint32_t* counts, uint64_t src_bytes, DeflatePlan* plan) {
  huffman_build_lengths<kLitSymbols>(counts, kLitSymbols, kMaxLitBits, plan->lit_lengths);
  deflate_plan_finish(counts, src_bytes, plan);
}

// Writes the dynamic block's header: BFINAL=1, BTYPE=10, HLIT, HDIST, HCLEN, the code-length code
// lengths and the run-length coded code lengths (plan.header_bits bits).
KVTC_HD inline void deflate_write_dynamic_header(const DeflatePlan& plan, BitWriter* bw) {
  bw->put(1, 1);  // BFINAL
  bw->put(2, 2);  // BTYPE = 10
  bw->put(kLitSymbols - 257, 5);
  bw->put(0, 5);  // HDIST: one distance code
  bw->put(uint32_t(plan.n_cl - 4), 4);
  for (int i = 0; i < plan.n_cl; ++i) bw->put(plan.cl_lengths[code_length_order(i)], 3);
  for (int i = 0; i < plan.n_rle; ++i) {
    const int sym = plan.rle[i] & 31;
    bw->put(plan.cl_codes[sym], plan.cl_lengths[sym]);
    if (sym >= 16) bw->put(uint32_t(plan.rle[i] >> 5), code_length_extra_bits(sym));
  }
}

// Stored blocks for src[0, n) from a byte-aligned position: BFINAL on the last, LEN, NLEN, bytes.
KVTC_HD inline void deflate_write_stored(const uint8_t* src, uint64_t n_bytes, BitWriter* bw) {
  uint64_t done = 0;
  do {
    const uint32_t len = uint32_t(n_bytes - done < kMaxStoredBlockBytes ? n_bytes - done : kMaxStoredBlockBytes);
    bw->put(done + len == n_bytes ? 1u : 0u, 1);
    bw->put(0, 2);  // BTYPE = 00
    bw->align_to_byte();
    bw->put(len, 16);
    bw->put(~len & 0xffffu, 16);
    for (uint32_t i = 0; i < len; ++i) bw->put_byte(src[done + i]);
    done += len;
  } while (done < n_bytes);
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (zlib's: reflected polynomial 0xEDB88320, initial and final inversion).
//
// The raw register form (start 0, no inversion) is linear, so segments can be computed apart and
// combined: raw(A || B) = raw(A) * x^(8|B|) xor raw(B) (mod P). The GPU gives each thread one
// segment of the output and XORs the shifted results; crc32_finish then adds the inversions.

constexpr uint32_t kCrc32Poly = 0xEDB88320u;

KVTC_HD inline uint32_t crc32_table_entry(uint32_t byte) {
  uint32_t c = byte;
  for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kCrc32Poly : c >> 1;
  return c;
}

// Raw register update over p[0, n) with a 256-entry table of crc32_table_entry.
KVTC_HD inline uint32_t crc32_raw_update(const uint32_t* table, uint32_t raw, const uint8_t* p, uint64_t n_bytes) {
  for (uint64_t i = 0; i < n_bytes; ++i) raw = table[(raw ^ p[i]) & 0xffu] ^ (raw >> 8);
  return raw;
}

// a * b mod P, polynomials in the reflected representation (bit 31 is x^0).
KVTC_HD inline uint32_t crc32_mul_mod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (int i = 0; i < 32; ++i) {
    if (a & (0x80000000u >> i)) product ^= b;
    b = (b & 1u) ? (b >> 1) ^ kCrc32Poly : b >> 1;  // b *= x
  }
  return product;
}

// x^(8 n) mod P: the factor that shifts a raw CRC past n more bytes.
KVTC_HD inline uint32_t crc32_x_pow_8n(uint64_t n_bytes) {
  uint32_t result = 0x80000000u;  // x^0
  uint32_t square = 0x00800000u;  // x^8
  for (; n_bytes != 0; n_bytes >>= 1) {
    if (n_bytes & 1u) result = crc32_mul_mod(square, result);
    square = crc32_mul_mod(square, square);
  }
  return result;
}

// zlib's crc32_combine: the CRC of A || B from crc(A), crc(B) and |B|.
KVTC_HD inline uint32_t crc32_combine_bytes(uint32_t crc_a, uint32_t crc_b, uint64_t b_bytes) {
  return crc32_mul_mod(crc32_x_pow_8n(b_bytes), crc_a) ^ crc_b;
}

// zlib's CRC-32 of a message of n bytes whose raw register value is `raw`.
KVTC_HD inline uint32_t crc32_finish(uint32_t raw, uint64_t n_bytes) {
  return ~(raw ^ crc32_mul_mod(crc32_x_pow_8n(n_bytes), 0xffffffffu));
}

// ---------------------------------------------------------------------------------------------
// The host mirror: the reference the GPU kernel must equal byte for byte.

struct DeflateEncodeResult {
  uint32_t status;     // DeflateEncodeStatus
  uint32_t out_bytes;  // stream size; 0 unless status is kEncodeOk
  uint32_t crc32;      // zlib CRC-32 of dst[0, out_bytes); 0 unless status is kEncodeOk
};

inline uint32_t crc32_host(const uint8_t* p, uint64_t n_bytes) {
  uint32_t table[256];
  for (uint32_t i = 0; i < 256; ++i) table[i] = crc32_table_entry(i);
  return ~crc32_raw_update(table, 0xffffffffu, p, n_bytes);
}

// Encodes src[0, src_bytes) into dst[0, dst_capacity). On kEncodeOverflow / kEncodeInputTooLarge
// nothing is written. plan_out (optional) receives the plan (code lengths, sizes, block type).
inline DeflateEncodeResult deflate_encode_host(const uint8_t* src, uint32_t src_bytes, uint8_t* dst,
                                               uint32_t dst_capacity, DeflatePlan* plan_out = nullptr) {
  DeflateEncodeResult result = {kEncodeOk, 0, 0};
  if (src_bytes > kMaxEncodeInputBytes) {
    result.status = kEncodeInputTooLarge;
    return result;
  }
  uint32_t counts[kLitSymbols] = {};
  for (uint32_t i = 0; i < src_bytes; ++i) ++counts[src[i]];
  counts[kEndOfBlock] = 1;
  DeflatePlan local_plan;
  DeflatePlan& plan = plan_out ? *plan_out : local_plan;
  deflate_plan_build(counts, src_bytes, &plan);
  if (plan.out_bytes > dst_capacity) {
    result.status = kEncodeOverflow;
    return result;
  }
  BitWriter bw = make_bit_writer(dst, dst_capacity);
  if (plan.use_stored) {
    deflate_write_stored(src, src_bytes, &bw);
  } else {
    deflate_write_dynamic_header(plan, &bw);
    for (uint32_t i = 0; i < src_bytes; ++i) bw.put(plan.lit_codes[src[i]], plan.lit_lengths[src[i]]);
    bw.put(plan.lit_codes[kEndOfBlock], plan.lit_lengths[kEndOfBlock]);
    bw.align_to_byte();
  }
  if (bw.overflow || bw.pos_bytes != plan.out_bytes) {
    result.status = kEncodeInternal;
    return result;
  }
  result.out_bytes = uint32_t(bw.pos_bytes);
  result.crc32 = crc32_host(dst, bw.pos_bytes);
  return result;
}

}  // namespace kvtc::cuda
