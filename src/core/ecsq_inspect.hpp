// A codec 3 container's codes chunks as rANS symbol streams: for each chunk, the runs of tables it was
// coded with and its symbols, decoded by the CPU's rANS decoder, with the chunk's own rANS bytes. For
// tests and benches of other rANS coders on real codes: an encoder given these symbols and runs must
// write the stored bytes again (tests/test_codec_v3.cpp holds rans_encode to that).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/calibration_data.hpp"
#include "entropy/rans_chunk.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

struct EcsqChunkRans {
  size_t chunk_index = 0;          // in the container's chunk table
  std::vector<RansRun> runs;       // tables of the calibration's ECSQ models (they must outlive this)
  std::vector<uint8_t> symbols;
  int n_lanes = 0;
  std::vector<uint8_t> rans_bytes;  // the rANS chunk as stored (header, lane states, words)
};

// Every ECSQ codes chunk of the container, in chunk-table order. Errors as the CPU decoder reports them
// (CORRUPT, CHECKSUM_MISMATCH for the token classes, INVALID_ARGUMENT for another calibration's file).
Result<std::vector<EcsqChunkRans>> ecsq_container_rans_chunks(const CalibrationData& cal, const uint8_t* bytes,
                                                              size_t size_bytes);

}  // namespace kvtc
