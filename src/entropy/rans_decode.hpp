// Fast rANS decoder: a direct slot -> symbol table (2^prob_bits bytes) and a (frequency, cumulative)
// pair per symbol, branch-free renormalisation, whole rounds of lanes without index checks while the
// stream cannot run out (chunk layout in entropy/rans_chunk.hpp).
// The slot table holds bytes, not (symbol, frequency, bias) words: kvtc codes a chunk with one table
// per component, hundreds of tables per ratio, and the smaller tables stay in cache (bench/RESULTS.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "entropy/rans_chunk.hpp"
#include "entropy/rans_table.hpp"

namespace kvtc {

// The decoding form of a RansTable: 2^prob_bits slots of one byte, 4 bytes per symbol.
class RansDecodeTable {
 public:
  // INVALID_ARGUMENT if the table is not valid (validate_rans_table).
  static Result<RansDecodeTable> build(const RansTable& table);

  int prob_bits() const { return prob_bits_; }
  const uint32_t* entries() const { return entry_.data(); }  // per symbol: freq << 16 | cum
  const uint8_t* symbols() const { return symbol_.data(); }  // per slot: the symbol

 private:
  int prob_bits_ = 0;
  std::vector<uint32_t> entry_;
  std::vector<uint8_t> symbol_;
};

struct RansDecodeRun {
  uint32_t n_symbols = 0;
  const RansDecodeTable* table = nullptr;
};

// Decodes one chunk of exactly chunk_bytes into out[0, n_symbols). n_symbols and the runs come from
// the context (they are not trusted from the chunk: the chunk's n_symbols must agree). CORRUPT if the
// header is malformed, the stream runs out or has words left over, or a lane does not end in its
// initial state 2^16; INVALID_ARGUMENT if the runs do not cover n_symbols. Never reads outside
// [chunk, chunk + chunk_bytes) and never writes past out + n_symbols; out is unspecified on error.
Status rans_decode(const uint8_t* chunk, size_t chunk_bytes, const RansDecodeRun* runs, size_t n_runs, uint8_t* out,
                   size_t n_symbols);
Status rans_decode(const uint8_t* chunk, size_t chunk_bytes, const RansDecodeTable& table, uint8_t* out,
                   size_t n_symbols);

// The number of lanes and stream bytes a chunk's header declares, after the checks rans_decode makes
// on the header alone (for inspection and benchmarks).
struct RansChunkInfo {
  uint32_t n_symbols = 0;
  int n_lanes = 0;
  uint32_t stream_bytes = 0;
};
Result<RansChunkInfo> parse_rans_chunk_header(const uint8_t* chunk, size_t chunk_bytes);

}  // namespace kvtc
