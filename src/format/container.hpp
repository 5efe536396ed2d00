// The container format (docs/FORMAT.md), defined once: constants, the parsed header, and the
// functions that write and validate it. Shared by the CPU codec, the reference decoder, the CUDA
// backend and the store; keep it free of host-only dependencies beyond the standard library.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/allocation.hpp"
#include "format/container_layout.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

// Constants, enums and byte offsets of the layout: format/container_layout.hpp.

struct ChunkEntry {
  ChunkKind kind = ChunkKind::kCodes;
  uint8_t stream = 0;  // 0 keys, 1 values
  CodesLayout layout = CodesLayout::kAligned;
  ChunkCoder coder = ChunkCoder::kDeflate;
  uint32_t token_begin = 0;
  uint32_t n_tokens = 0;
  uint32_t item_begin = 0;  // codes: first component; exact: layer
  uint32_t n_items = 0;     // codes: components; exact: 1
  uint64_t offset = 0;      // from the payload start
  uint32_t stored_bytes = 0;
  uint32_t raw_bytes = 0;  // DEFLATE: size after inflating; ECSQ rANS: the number of symbols
  uint32_t crc32 = 0;
};

struct StreamAllocation {
  uint32_t basis_rank = 0;
  Quantiser quantiser = Quantiser::kGroups;
  std::vector<Group> groups;  // kGroups
  // kEcsq: the level of the calibration's ECSQ model (rate control's choice), the components it
  // keeps (1 + the last with a cell), and the model's fingerprint (ecsq_model_fingerprint).
  // kEcsqClasses: ecsq_level codes the tokens of class 0, ecsq_level_high (<= ecsq_level: finer)
  // those of class 1, and ecsq_n_kept is the larger of the two levels' n_kept.
  uint32_t ecsq_level = 0;
  uint32_t ecsq_level_high = 0;
  uint32_t ecsq_n_kept = 0;
  uint64_t ecsq_fingerprint = 0;
  bool ecsq() const { return quantiser == Quantiser::kEcsq || quantiser == Quantiser::kEcsqClasses; }
  bool token_classes() const { return quantiser == Quantiser::kEcsqClasses; }
  uint32_t n_kept() const {
    if (ecsq()) return ecsq_n_kept;
    return groups.empty() ? 0 : groups.back().first_component + groups.back().n_components;
  }
  int64_t nominal_bits_per_token() const;  // groups' fixed-width bits; 0 for ECSQ (no fixed size)
};

struct ContainerHeader {
  uint32_t format_version = kContainerVersion;  // as read; written as 4 with token classes, 3 with ECSQ, else 2
  ModelShape shape;
  DType dtype = DType::kBF16;
  int64_t position_offset = 0;
  uint64_t n_tokens = 0;
  uint32_t n_head_exact = 0;
  uint32_t n_tail_exact = 0;
  uint64_t calibration_fingerprint = 0;
  double target_ratio = 0.0;
  std::map<std::string, std::string> metadata;
  StreamAllocation streams[2];
  std::vector<ChunkEntry> chunks;

  uint64_t n_compressed_tokens() const { return n_tokens - n_head_exact - n_tail_exact; }
  bool token_classes() const { return streams[0].token_classes() || streams[1].token_classes(); }
};

// Serialises preamble + header (with its CRC). `payload_bytes` is not needed: offsets are in chunks.
std::vector<uint8_t> serialize_container_header(const ContainerHeader& header);

struct ParsedContainer {
  ContainerHeader header;
  uint64_t payload_offset = 0;  // absolute file offset of the payload
};

// Parses and validates preamble, header, chunk table and coverage against the file size (section 4
// and 7 of docs/FORMAT.md). Does not inflate chunks. Never reads out of bounds.
Result<ParsedContainer> parse_container(const uint8_t* bytes, size_t size_bytes);

// Expected raw size of a chunk's content (section 5), or an error if the entry is inconsistent. For an
// ECSQ codes chunk (symbol count) only its bounds can be checked without the calibration's model: it
// returns raw_bytes when within them, and the decoder checks the exact count (ecsq_chunk.hpp).
Result<uint64_t> expected_chunk_raw_bytes(const ContainerHeader& header, const ChunkEntry& chunk);

// Container width for a code of width w (section 5): 1, 2, 4, 4, 8, 8, 8, 8.
inline int container_width_bits(int width_bits) {
  return width_bits <= 1 ? 1 : width_bits == 2 ? 2 : width_bits <= 4 ? 4 : 8;
}

// A cache with the header's shape, dtype, positions and metadata, and no layer data (k, v hold
// n_layers empty vectors): what a decoder fills in.
KVCache cache_skeleton(const ContainerHeader& header);

// CRC-32 as zlib computes it.
uint32_t crc32_of(const uint8_t* data, size_t size_bytes);

}  // namespace kvtc
