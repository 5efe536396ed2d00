// One plan, many executors: the container an encoder will write, decided before any cache data is
// read. The CPU encoder (src/cpu/encoder.cpp) and the CUDA encoders (src/cuda/gpu_encoder.cpp,
// batch_encoder.cpp) execute the same plan, so that "the same chunks in the same order" holds by
// construction rather than by two copies kept in step.
//
// A plan holds the header (shape, positions, exact counts, calibration fingerprint, metadata, each
// stream's allocation) and the chunk table in table order: for each stream, token block by token
// block, the block's side chunk then its codes chunks (codec 2); then the exact chunks, per stream,
// layer and segment (head, tail), split so that no chunk's raw size exceeds chunk_max_bytes (one token
// at least). Each entry has its kind, stream, token range, items and raw_bytes (codes chunks: the
// aligned layout's size; an executor may switch a chunk to the dense layout). Offsets, stored sizes and
// CRCs are the executor's.
//
// Codec 3 plans its exact chunks only: its codes chunks depend on the level that rate control picks
// from the data (src/cpu/encoder_ecsq.cpp), so the executor appends them to the coefficient chunks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/calibration_data.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"

namespace kvtc {

struct ContainerPlan {
  ContainerHeader header;     // header.chunks: the coefficient chunks, then the exact chunks
  size_t n_coef_chunks = 0;   // side and codes chunks (codec 2), first in the table
  int64_t t0 = 0, m = 0;      // first compressed token, number of compressed tokens
};

// Option checks shared by every encoder (INVALID_ARGUMENT with the same messages everywhere).
Status check_encode_options(const EncodeOptions& options);

// Plans the container of a cache of this shape, dtype, token count, position offset and metadata
// (MISMATCH when the shape is not the calibration's; the options' own errors as check_encode_options).
Result<ContainerPlan> plan_container(const CalibrationData& cal, const ModelShape& shape, DType dtype, int64_t n_tokens,
                                     int64_t position_offset, const std::map<std::string, std::string>& metadata,
                                     const EncodeOptions& options);

}  // namespace kvtc
