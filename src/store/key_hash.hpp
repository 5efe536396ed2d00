// The 64-bit hash of a store key, and a transparent string hash for the tiers' maps.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace kvtc::store::detail {

// Names disk files and fills the S3-FIFO ghost queue. It is part of the disk format (file names), so it
// must never change: FNV-1a 64 followed by the splitmix64 finaliser.
inline uint64_t hash_key(std::string_view key) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

// For unordered maps keyed by std::string that are searched with a std::string_view.
struct TransparentHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace kvtc::store::detail
