// The file of one disk entry, and how it is written and read (docs/STORE.md, "Disk entry format").
//
//   offset  size  field
//        0     4  magic "KVST"
//        4     2  format version (1), little-endian like every field
//        6     2  header size in bytes (32)
//        8     4  key length in bytes
//       12     4  reserved, 0
//       16     8  value length in bytes
//       24     4  CRC-32 of key then value
//       28     4  CRC-32 of bytes 0..27 (so a damaged length is never trusted)
//       32        key, then value; the file ends there
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "kvtc/store.hpp"

namespace kvtc::store::detail {

inline constexpr size_t kEntryHeaderBytes = 32;
inline constexpr uint16_t kEntryVersion = 1;

struct EntryHeader {
  uint32_t key_bytes = 0;
  uint64_t value_bytes = 0;
  uint32_t payload_crc = 0;
  uint64_t file_bytes() const { return kEntryHeaderBytes + key_bytes + value_bytes; }
};

// Checks magic, version, header CRC, and that the lengths account for exactly `file_bytes`:
// kCorrupt ("truncated", "bad magic", ...) or kChecksumMismatch ("header checksum").
Result<EntryHeader> parse_entry_header(const uint8_t* header, uint64_t file_bytes);

// "<16 lowercase hex digits of hash_key(key)>.kvb", or "<hex>-<n>.kvb" for the n-th collision.
std::string entry_file_name(uint64_t key_hash, int collision);
// Whether `name` is an entry file name; *key_hash gets the hash it names.
bool parse_entry_file_name(std::string_view name, uint64_t* key_hash);
// Temporaries are "<entry name>.tmp.<pid>.<sequence>".
bool is_temp_file_name(std::string_view name);

// Writes the entry to a temporary in `dir`, fsyncs it (if sync), renames it to `name` and fsyncs the
// directory (if sync). On failure the temporary is removed and nothing else changes, except when only
// the fsync of the directory failed: the new file is then in place (`*in_place` is set) and readable,
// its durability unknown. If the hook returns false the temporary stays (a simulated crash) and kIo is
// returned. Error messages name the file and the system's reason (with "disk full; nothing stored was
// lost" on ENOSPC and EDQUOT).
Status write_entry_file(const std::string& dir, const std::string& name, std::string_view key,
                        std::span<const uint8_t> value, bool sync, const std::function<bool()>& before_rename,
                        bool* in_place = nullptr);

struct EntryContents {
  std::string key;
  Bytes value;
};
// Reads and checks a whole entry file: kIo (including a file that does not exist: `*missing` is set),
// kCorrupt, or kChecksumMismatch.
Result<EntryContents> read_entry_file(const std::string& path, bool* missing);

// Reads the header and key only (and with verify, the value too, to check the CRC).
struct EntryInfo {
  std::string key;
  uint64_t file_bytes = 0;
  int64_t mtime_ns = 0;
};
Result<EntryInfo> scan_entry_file(const std::string& path, bool verify);

Status fsync_directory(const std::string& dir);

}  // namespace kvtc::store::detail
