// Whole-file reads and crash-safe writes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc {

Result<std::vector<uint8_t>> read_file(const std::string& path);

// A whole regular file, memory-mapped read-only and private: pages load on demand, so mapping a large
// file costs no read. `holder` owns the mapping (unmapped when the last copy goes); an empty file has
// no mapping (data null, size 0). A file cut short by another process while mapped would fault on
// access: kvtc's own files are replaced by rename, never rewritten in place.
struct MappedFile {
  std::shared_ptr<void> holder;
  const uint8_t* data = nullptr;
  size_t size_bytes = 0;
};
Result<MappedFile> map_file(const std::string& path);

// Writes to "<path>.tmp.<pid>" in the same directory, flushes, then renames over `path`, so readers
// see the old file or the whole new one, never a partial one. On failure the temporary is removed.
Status write_file_atomic(const std::string& path, const uint8_t* data, size_t size_bytes);
inline Status write_file_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  return write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace kvtc
