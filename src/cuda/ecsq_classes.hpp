// Host side of token classes (container format 4, docs/FORMAT.md section 10) for the GPU decoder: the
// token rows a block's chunks share and the symbol count a chunk must have. The kernel walks each
// chunk's runs itself from the levels' cell maps (cuda/ecsq_decode.cuh), so nothing per component is
// built or uploaded here.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/ecsq_device_level.hpp"

namespace kvtc::cuda {

// Appends a block's token offsets to `rows`: its class-1 tokens, then its class-0 tokens, each in token
// order (classes: the block's n_tokens bytes of the class map). Returns how many are of class 1.
uint32_t append_block_rows(const uint8_t* classes, uint32_t n_tokens, std::vector<uint32_t>& rows);

// Symbols of a chunk over components [c0, c1): n_low for each where the base level `low` has a cell,
// n_high for each where the high level has one.
uint64_t class_chunk_symbols(const EcsqDeviceLevel& low, const EcsqDeviceLevel& high, uint32_t c0, uint32_t c1,
                             uint64_t n_low, uint64_t n_high);

}  // namespace kvtc::cuda
