// The AVX2 round loop of the fast rANS decoder (rans_decode.cpp): 8 lanes per instruction, the same
// steps as the scalar loop, so its output is identical. Internal to src/entropy.
#pragma once

#include <cstddef>
#include <cstdint>

#include "entropy/rans_decode.hpp"

namespace kvtc {

// Whether rans_decode uses rans_rounds_avx2: the CPU has AVX2 (false on other targets) and it has not
// been turned off. rans_enable_avx2(false) makes rans_decode scalar, for tests and benchmarks that
// compare the two paths (process-wide).
bool rans_have_avx2();
void rans_enable_avx2(bool enabled);

// Decodes whole rounds of n_lanes symbols (n_lanes a multiple of 8, the first symbol in lane 0) while
// at least n_lanes symbols remain of `count` and the stream holds at least n_lanes more words from
// pos, as the scalar round loop does. Updates state[0, n_lanes) and pos; returns the symbols written
// to out. The table's symbol array must be padded by 3 bytes (RansDecodeTable's is).
size_t rans_rounds_avx2(const RansDecodeTable& t, uint32_t* state, size_t n_lanes, const uint8_t* words,
                        size_t n_words, size_t& pos, uint8_t* out, size_t count);

}  // namespace kvtc
