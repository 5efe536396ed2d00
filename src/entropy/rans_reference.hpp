// The slow reference rANS decoder: docs/FORMAT.md's "rANS chunk" section read aloud, with a search of
// the cumulative frequencies for every symbol and no lookup tables. Tests hold the fast decoder
// (rans_decode.hpp) and the encoder to it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "entropy/rans_chunk.hpp"
#include "entropy/rans_table.hpp"

namespace kvtc {

// Same contract as rans_decode over RansDecodeRun, with the tables as RansTable.
Status rans_decode_reference(const uint8_t* chunk, size_t chunk_bytes, const RansRun* runs, size_t n_runs,
                             uint8_t* out, size_t n_symbols);

}  // namespace kvtc
