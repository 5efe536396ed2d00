// The decode step of lane l for symbol i (l = i mod N), with x its state and M = 2^prob_bits:
//   slot = x & (M - 1); s = symbol[slot]; (f, c) = (freq, cum)[s]; x = f * (x >> prob_bits) + slot - c;
//   if x < 2^16: x = x << 16 | next word.
// For any state in [2^16, 2^32) and any table this keeps x in [2^16, 2^32) (f * (x >> pb) + slot - c <
// f * 2^(32 - pb) <= 2^32, and x >> pb >= 1 makes x >= 1 before the shift), so corrupt input can give
// wrong symbols but never an undefined state. The word read clamps its index, and the position moves
// only where a word was needed; an overrun shows as a position past the end, checked once per chunk.
#include "entropy/rans_decode.hpp"

#include "entropy/rans_decode_avx2.hpp"

#include <algorithm>
#include <cstring>
#include <string>

namespace kvtc {
namespace {

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// One decode step of one lane: returns the new state, sets the symbol and advances pos by the word
// read, if any. kChecked: the word index may lie past the stream, so it is clamped (an overrun shows
// later as pos > n_words); otherwise the caller guarantees pos < n_words. Everything is passed and
// returned by value so that the byte stores to the output cannot force reloads (a uint8_t store may
// alias anything reached through a pointer).
template <bool kChecked>
inline uint32_t step(uint32_t x, int pb, uint32_t mask, const uint32_t* entry, const uint8_t* sym, const uint8_t* words,
                     size_t n_words, size_t& pos, uint8_t& symbol) {
  const uint32_t slot = x & mask;
  symbol = sym[slot];
  const uint32_t e = entry[symbol];
  x = (e >> 16) * (x >> pb) + slot - (e & 0xffffu);
  const uint32_t need = x < kRansStateLow;
  uint16_t w = 0;
  if (!kChecked) {
    std::memcpy(&w, words + 2 * pos, 2);
  } else if (n_words > 0) {
    std::memcpy(&w, words + 2 * (pos < n_words ? pos : 0), 2);
  }
  pos += need;
  // A select through a mask rather than `need ? a : b`, which compilers may turn into a branch that
  // mispredicts about every other symbol.
  const uint32_t take = 0u - need;
  return (x & ~take) | ((x << 16 | w) & take);
}

// The lanes' loop over one run of symbols with one table: single checked steps up to a lane-0
// boundary, then whole rounds of n_lanes symbols without index checks while the stream holds at
// least n_lanes more words (a round reads at most one word per lane; with AVX2 and n_lanes a multiple
// of 8, rans_decode_avx2.cpp runs these rounds), then checked steps again.
// `state` is the caller's local array (it never escapes), pos and lane are copied into locals.
inline void decode_run(const RansDecodeTable& t, uint32_t* state, int n_lanes, int& lane_io, const uint8_t* words,
                       size_t n_words, size_t& pos_io, uint8_t* out, size_t count) {
  const int pb = t.prob_bits();
  const uint32_t mask = (1u << pb) - 1u;
  const uint32_t* entry = t.entries();
  const uint8_t* sym = t.symbols();
  const size_t lanes = size_t(n_lanes);
  size_t i = 0, pos = pos_io;
  size_t l = size_t(lane_io);
  uint8_t s = 0;
  for (; i < count && l != 0; ++i) {
    state[l] = step<true>(state[l], pb, mask, entry, sym, words, n_words, pos, s);
    out[i] = s;
    l = l + 1 == lanes ? 0 : l + 1;
  }
  if (lanes % 8 == 0 && rans_have_avx2()) i += rans_rounds_avx2(t, state, lanes, words, n_words, pos, out + i, count - i);
  while (count - i >= lanes && pos + lanes <= n_words) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 4
#endif
    for (size_t j = 0; j < lanes; ++j) {
      state[j] = step<false>(state[j], pb, mask, entry, sym, words, n_words, pos, s);
      out[i + j] = s;
    }
    i += lanes;
  }
  for (; i < count; ++i) {
    state[l] = step<true>(state[l], pb, mask, entry, sym, words, n_words, pos, s);
    out[i] = s;
    l = l + 1 == lanes ? 0 : l + 1;
  }
  pos_io = pos;
  lane_io = int(l);
}

}  // namespace

Result<RansDecodeTable> RansDecodeTable::build(const RansTable& table) {
  Status s = validate_rans_table(table);
  if (!s.is_ok()) return invalid_argument(s.message());
  RansDecodeTable d;
  d.prob_bits_ = table.prob_bits;
  d.entry_.resize(table.freq.size());
  d.symbol_.assign(table.total() + 3, 0);  // 3 bytes of padding for 4-byte gathers (rans_decode_avx2.cpp)
  for (size_t sym = 0; sym < table.freq.size(); ++sym) {
    d.entry_[sym] = uint32_t(table.freq[sym]) << 16 | table.cum[sym];
    std::memset(d.symbol_.data() + table.cum[sym], int(sym), table.freq[sym]);
  }
  return d;
}

Result<RansChunkInfo> parse_rans_chunk_header(const uint8_t* chunk, size_t chunk_bytes) {
  if (chunk == nullptr || chunk_bytes < kRansChunkHeaderBytes)
    return corrupt("rANS chunk: truncated header (" + std::to_string(chunk_bytes) + " bytes, 12 needed)");
  RansChunkInfo info;
  info.n_symbols = load_u32(chunk + kRansSymbolsOffset);
  info.n_lanes = chunk[kRansLanesOffset];
  info.stream_bytes = load_u32(chunk + kRansStreamBytesOffset);
  const uint8_t* reserved = chunk + kRansReservedOffset;
  if (reserved[0] != 0 || reserved[1] != 0 || reserved[2] != 0) return corrupt("rANS chunk: reserved bytes are not 0");
  if (info.n_symbols > kRansMaxChunkSymbols)
    return corrupt("rANS chunk: " + std::to_string(info.n_symbols) + " symbols exceed the chunk bound");
  if (info.n_lanes < 1 || info.n_lanes > kRansMaxLanes)
    return corrupt("rANS chunk: " + std::to_string(info.n_lanes) + " lanes (1..64)");
  if (info.stream_bytes % 2 != 0 || info.stream_bytes > 2ull * info.n_symbols)
    return corrupt("rANS chunk: stream of " + std::to_string(info.stream_bytes) + " bytes for " +
                   std::to_string(info.n_symbols) + " symbols");
  const uint64_t expected = kRansChunkHeaderBytes + 4ull * uint64_t(info.n_lanes) + info.stream_bytes;
  if (chunk_bytes != expected)
    return corrupt("rANS chunk: " + std::to_string(chunk_bytes) + " bytes, the header declares " +
                   std::to_string(expected));
  return info;
}

Status rans_decode(const uint8_t* chunk, size_t chunk_bytes, const RansDecodeRun* runs, size_t n_runs, uint8_t* out,
                   size_t n_symbols) {
  size_t covered = 0;
  for (size_t r = 0; r < n_runs; ++r) {
    if (runs[r].table == nullptr) return invalid_argument("rANS decode: run " + std::to_string(r) + " has no table");
    covered += runs[r].n_symbols;
  }
  if (covered != n_symbols)
    return invalid_argument("rANS decode: runs cover " + std::to_string(covered) + " symbols, not " +
                            std::to_string(n_symbols));
  auto info = parse_rans_chunk_header(chunk, chunk_bytes);
  if (!info.is_ok()) return info.status();
  if (info->n_symbols != n_symbols)
    return corrupt("rANS chunk: holds " + std::to_string(info->n_symbols) + " symbols, " + std::to_string(n_symbols) +
                   " expected");
  const int n_lanes = info->n_lanes;
  uint32_t state[kRansMaxLanes];
  for (int l = 0; l < n_lanes; ++l) {
    state[l] = load_u32(chunk + kRansStatesOffset + 4 * size_t(l));
    if (state[l] < kRansStateLow) return corrupt("rANS chunk: lane " + std::to_string(l) + " starts below 2^16");
  }
  const uint8_t* words = chunk + kRansStatesOffset + 4 * size_t(n_lanes);
  const size_t n_words = info->stream_bytes / 2;
  size_t pos = 0;
  int lane = 0;
  size_t i = 0;
  for (size_t r = 0; r < n_runs; ++r) {
    decode_run(*runs[r].table, state, n_lanes, lane, words, n_words, pos, out + i, runs[r].n_symbols);
    i += runs[r].n_symbols;
  }
  if (pos > n_words) return corrupt("rANS chunk: the stream ends before the last symbol");
  if (pos < n_words)
    return corrupt("rANS chunk: " + std::to_string(2 * (n_words - pos)) + " stream bytes left after the last symbol");
  for (int l = 0; l < n_lanes; ++l)
    if (state[l] != kRansStateLow)
      return corrupt("rANS chunk: lane " + std::to_string(l) + " does not end in its initial state");
  return Status::ok();
}

Status rans_decode(const uint8_t* chunk, size_t chunk_bytes, const RansDecodeTable& table, uint8_t* out,
                   size_t n_symbols) {
  const RansDecodeRun run{uint32_t(std::min<size_t>(n_symbols, UINT32_MAX)), &table};
  return rans_decode(chunk, chunk_bytes, &run, 1, out, n_symbols);
}

}  // namespace kvtc
