// Token classes (container format 4, docs/FORMAT.md section 10): a bit per compressed token that picks
// which of a stream's two ECSQ levels codes it, so that the tokens attention needs most get more of the
// same budget. One classes chunk per container (DEFLATE, bit t least significant first), shared by K and V.
#pragma once

#include <cstdint>
#include <vector>

#include "format/container.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

// Classes of m tokens from their importance (higher: more worth): the round(fraction * m) most
// important take class 1, the rest class 0; of equal importance the later token wins (it is nearer
// the queries to come). NaN counts as least important. Result: m bytes of 0 or 1.
std::vector<uint8_t> choose_token_classes(const float* importance, int64_t m, double fraction);

// The classes chunk's raw content: ceil(m / 8) bytes, bit t of byte t / 8 (least significant first)
// set for class 1, padding bits 0.
std::vector<uint8_t> pack_token_classes(const std::vector<uint8_t>& classes);

// The container's classes, one byte (0 or 1) per compressed token, read from its classes chunk
// (checksum verified when `verify`); empty when no stream has token classes. CORRUPT for a chunk that
// does not inflate to its size or has padding bits set.
Result<std::vector<uint8_t>> read_token_classes(const ContainerHeader& header, const uint8_t* payload, bool verify);

}  // namespace kvtc
