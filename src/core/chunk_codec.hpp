// Chunk contents (docs/FORMAT.md section 5): packing and unpacking of side, codes and exact chunks.
// The fast CPU encoder and decoder use these; the reference decoder deliberately does not.
#pragma once

#include <cstdint>
#include <vector>

#include "format/container.hpp"

namespace kvtc {

// Symbols of one stream for one token block, component-major: sym[j * n + i] is token i's symbol of
// component j (a code for int groups, the fp16 bit pattern for fp16 groups, unused for dropped).
// side[g] holds the block's per-token scales (int, int-affine) followed by shifts (int-affine only)
// of group g: 0, n or 2n values.
struct BlockSymbols {
  int64_t n_tokens = 0;
  std::vector<uint16_t> sym;
  std::vector<std::vector<uint16_t>> side;
};

// Writes k-byte elements in byte planes (all byte 0s, then all byte 1s, ...), and back.
void to_byte_planes(const uint8_t* elements, int64_t count, int element_bytes, uint8_t* out);
void from_byte_planes(const uint8_t* planes, int64_t count, int element_bytes, uint8_t* out);

void pack_side(const StreamAllocation& a, const BlockSymbols& b, std::vector<uint8_t>& raw);
Status unpack_side(const StreamAllocation& a, const uint8_t* raw, size_t raw_bytes, BlockSymbols& b);

// Components [c0, c1) of the block.
void pack_codes(const StreamAllocation& a, const BlockSymbols& b, uint32_t c0, uint32_t c1, CodesLayout layout,
                std::vector<uint8_t>& raw);
Status unpack_codes(const StreamAllocation& a, const uint8_t* raw, size_t raw_bytes, uint32_t c0, uint32_t c1,
                    CodesLayout layout, BlockSymbols& b);

// Nominal (dense) and aligned sizes of a codes chunk, in bytes.
uint64_t codes_raw_bytes(const StreamAllocation& a, uint64_t n_tokens, uint32_t c0, uint32_t c1, CodesLayout layout);

// Tokens per block of a stream: chunk_tokens, lowered (to 16 at least) so that the block's side chunk
// stays within chunk_max_bytes raw. A side chunk is one serial DEFLATE stream, and allocations with
// many groups carry hundreds of side bytes per token; both encoders use this rule.
int64_t block_tokens(const StreamAllocation& a, int64_t chunk_tokens, int64_t chunk_max_bytes);

// Component ranges for one token block so that each aligned chunk is at most max_bytes (one component
// at least): the partition of [0, n_kept) an encoder writes.
std::vector<std::pair<uint32_t, uint32_t>> split_components(const StreamAllocation& a, uint64_t n_tokens,
                                                            uint64_t max_bytes);

}  // namespace kvtc
