// Whole-file reads and crash-safe writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc {

Result<std::vector<uint8_t>> read_file(const std::string& path);

// Writes to "<path>.tmp.<pid>" in the same directory, flushes, then renames over `path`, so readers
// see the old file or the whole new one, never a partial one. On failure the temporary is removed.
Status write_file_atomic(const std::string& path, const uint8_t* data, size_t size_bytes);
inline Status write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  return write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace kvtc
