// The container's fixed layout (docs/FORMAT.md sections 2-4), one definition for the host code that
// writes and parses containers (format/container.cpp) and the device code that fills chunk tables in
// place (cuda/container_assembly.hpp): magic, versions, sizes, the enums stored in it, and the byte
// offsets of the preamble's and a chunk entry's fields. All integers are little-endian.
#pragma once

#include <array>
#include <cstdint>

namespace kvtc {

inline constexpr std::array<uint8_t, 8> kContainerMagic = {0x89, 'K', 'V', 'T', 'C', '\r', '\n', 0x1a};
// Readers accept kOldestContainerVersion..kContainerVersion (docs/FORMAT.md section 8). Writers use
// version 4 where a stream has token classes (quantiser 2), version 3 where a stream is otherwise
// ECSQ-coded (codec v3), else version 2, so that each older codec's output is unchanged.
inline constexpr uint32_t kContainerVersion = 4;
inline constexpr uint32_t kEcsqContainerVersion = 3;
inline constexpr uint32_t kGroupsContainerVersion = 2;
inline constexpr uint32_t kOldestContainerVersion = 1;
inline constexpr uint32_t kPreambleBytes = 16;
inline constexpr uint32_t kChunkEntryBytes = 40;
inline constexpr uint32_t kGroupEntryBytes = 12;
inline constexpr uint32_t kMaxHeaderBytes = 1u << 28;
inline constexpr uint32_t kMaxChunkRawBytes = 1u << 28;

// kClasses (version 4): one bit per compressed token, its rate class (docs/FORMAT.md section 10).
enum class ChunkKind : uint8_t { kExact = 0, kSide = 1, kCodes = 2, kClasses = 3 };
enum class CodesLayout : uint8_t { kAligned = 0, kDense = 1 };
// How a chunk's stored bytes are coded (version 3; byte 3 of a chunk entry, reserved before).
enum class ChunkCoder : uint8_t { kDeflate = 0, kEcsqRans = 1 };
// How a stream's compressed tokens are quantised (version 3): kEcsqClasses (version 4) is ECSQ with two
// levels, one per token class.
enum class Quantiser : uint8_t { kGroups = 0, kEcsq = 1, kEcsqClasses = 2 };

// The preamble: magic, then u32 version, then u32 header_bytes (everything after the preamble up to
// and including the header CRC).
inline constexpr uint32_t kPreambleVersionOffset = 8;
inline constexpr uint32_t kPreambleHeaderBytesOffset = 12;
static_assert(kPreambleHeaderBytesOffset + 4 == kPreambleBytes);

// A chunk entry (section 4), field by field.
namespace chunk_entry {
inline constexpr uint32_t kKind = 0;         // u8 ChunkKind
inline constexpr uint32_t kStream = 1;       // u8 0 keys, 1 values
inline constexpr uint32_t kLayout = 2;       // u8 CodesLayout
inline constexpr uint32_t kCoder = 3;        // u8 ChunkCoder (version 3; reserved 0 before)
inline constexpr uint32_t kTokenBegin = 4;   // u32
inline constexpr uint32_t kNTokens = 8;      // u32
inline constexpr uint32_t kItemBegin = 12;   // u32 codes: first component; exact: layer; classes: 0
inline constexpr uint32_t kNItems = 16;      // u32
inline constexpr uint32_t kOffset = 20;      // u64 from the payload start
inline constexpr uint32_t kStoredBytes = 28; // u32
inline constexpr uint32_t kRawBytes = 32;    // u32
inline constexpr uint32_t kCrc32 = 36;       // u32 of the stored bytes
}  // namespace chunk_entry
static_assert(chunk_entry::kCrc32 + 4 == kChunkEntryBytes);

}  // namespace kvtc
