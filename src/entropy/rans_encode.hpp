// rANS encoder: 32-bit states, 16-bit renormalisation, N interleaved lanes, one chunk per call
// (layout in entropy/rans_chunk.hpp and docs/FORMAT.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "entropy/rans_chunk.hpp"
#include "entropy/rans_table.hpp"

namespace kvtc {

// Codes symbols[0, n_symbols) into one chunk, replacing `out`. The runs cover the symbols in order
// (their n_symbols sum to n_symbols) and say which table codes each. INVALID_ARGUMENT if n_lanes is
// outside 1..64, n_symbols exceeds kRansMaxChunkSymbols, the runs do not cover the symbols, a table is
// not valid, or a symbol has frequency 0 in its table (or lies outside its alphabet).
Status rans_encode(const uint8_t* symbols, size_t n_symbols, const RansRun* runs, size_t n_runs, int n_lanes,
                   std::vector<uint8_t>& out);
// One table for all symbols.
Status rans_encode(const uint8_t* symbols, size_t n_symbols, const RansTable& table, int n_lanes,
                   std::vector<uint8_t>& out);

}  // namespace kvtc
