// The byte layout of one rANS chunk (docs/FORMAT.md, "rANS chunk (format v3 draft, not yet used by any
// container)"), shared by the encoder and the fast decoder. The reference decoder (rans_reference.cpp)
// deliberately reads the layout on its own, from the spec.
//
//   offset     type         field
//   0          u32          n_symbols, 0..kRansMaxChunkSymbols
//   4          u8           n_lanes N, 1..kRansMaxLanes
//   5          u8           reserved, 0
//   6          u16          reserved, 0
//   8          u32          stream_bytes S: even, <= 2 * n_symbols
//   12         N x u32      lane states, each in [2^16, 2^32): the decoder's initial states
//   12 + 4N    S bytes      S / 2 little-endian u16 words, read first to last
//
// Symbol i belongs to lane i mod N. Decoding symbol i with table T (x = that lane's state,
// M = 2^T.prob_bits): slot = x mod M; s is the symbol with T.cum[s] <= slot < T.cum[s + 1];
// x = T.freq[s] * (x >> prob_bits) + slot - T.cum[s]; then, if x < 2^16, x = (x << 16) | next word.
// After the last symbol every lane's state is 2^16 and all S bytes have been read.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtc {

// Declared only, so that this header stays plain C++17 for nvcc (entropy/rans_table.hpp has C++20
// defaulted comparisons): the GPU decoder needs the layout constants, not the table.
struct RansTable;

constexpr uint32_t kRansStateLow = 1u << 16;        // L: states live in [L, 2^32); encoders start at L
constexpr int kRansWordBits = 16;                   // renormalisation unit
constexpr int kRansMaxLanes = 64;
constexpr uint32_t kRansMaxChunkSymbols = 1u << 16;  // bounds one chunk's serial work
constexpr size_t kRansChunkHeaderBytes = 12;
// The header's fields, by byte offset (the table above); every reader of the layout names them.
constexpr size_t kRansSymbolsOffset = 0;      // u32 n_symbols
constexpr size_t kRansLanesOffset = 4;        // u8 n_lanes
constexpr size_t kRansReservedOffset = 5;     // 3 bytes, 0
constexpr size_t kRansStreamBytesOffset = 8;  // u32 stream_bytes
constexpr size_t kRansStatesOffset = kRansChunkHeaderBytes;  // N x u32 lane states

// A run of consecutive symbols coded with one table. A chunk's symbols are a sequence of runs (for
// kvtc, one run per component of a codes chunk, each with its component's table); the runs are
// known to encoder and decoder from context and are not stored in the chunk.
struct RansRun {
  uint32_t n_symbols = 0;
  const RansTable* table = nullptr;
};

}  // namespace kvtc
