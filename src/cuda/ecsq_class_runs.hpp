// The runs of codec 3 codes chunks with token classes (container format 4, docs/FORMAT.md section 10),
// in the form the GPU decoder reads (cuda/ecsq_decode.cuh, EcsqDecodeRun): for each component of a
// chunk, the class-1 tokens at the high level's cell, then the class-0 tokens at the base level's,
// each run only where its level has a cell and its class has tokens in the chunk.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/ecsq_decode.cuh"
#include "cuda/ecsq_device_level.hpp"
#include "kvtc/status.hpp"

namespace kvtc::cuda {

// Appends one chunk's runs to `runs` and its token offsets (class 1, then class 0, each ascending) to
// `rows`; the runs' rows_begin are relative to the chunk's first row (the caller adds where its rows
// start). classes: the chunk's n_tokens bytes of the class map. Returns the chunk's symbol count.
// CORRUPT where components [c0, c1) lie beyond both levels' kept ones.
Result<uint64_t> append_class_runs(const EcsqDeviceLevel& low, const EcsqDeviceLevel& high, const uint8_t* classes,
                                   uint32_t n_tokens, uint32_t c0, uint32_t c1, std::vector<EcsqDecodeRun>& runs,
                                   std::vector<uint32_t>& rows);

}  // namespace kvtc::cuda
