// A reader and writer for the safetensors format (https://github.com/huggingface/safetensors):
// 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, ...,
// "__metadata__": {str: str}}, then the data. Used for cache files and for model weights (engine).
// Every header field is checked against the file size before any data is touched.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "BF16", "F16", "F32", ... as written in the file
  std::vector<int64_t> shape;
  uint64_t offset_bytes = 0;    // from the start of the data section
  uint64_t size_bytes = 0;
  int64_t n_elements() const;
};

// A parsed safetensors file. Holds the bytes either in a read-only memory map (open) or in a buffer
// it was given (parse); entry data stays valid as long as this object lives.
class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::string& path);
  static Result<SafetensorsFile> parse(std::vector<uint8_t> bytes);
  // Parses without copying; `data` must outlive the object.
  static Result<SafetensorsFile> parse_view(const uint8_t* data, size_t size_bytes);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr when absent
  const uint8_t* data(const SafetensorsEntry& e) const { return data_ + e.offset_bytes; }

  // Converts one tensor (BF16, F16 or F32) to fp32. Other dtypes: kUnsupported.
  Result<std::vector<float>> read_f32(const std::string& name) const;
  Status read_f32_into(const SafetensorsEntry& e, float* out) const;

 private:
  std::shared_ptr<void> holder_;  // mmap or buffer
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsEntry> entries_;
};

// One tensor to write: fp32 source values converted to `dtype` on the way out.
struct SafetensorsTensorF32 {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
  const float* values = nullptr;  // n_elements of shape
};

// Serialises tensors (in the given order) and string metadata. The header is padded with spaces to a
// multiple of 8 bytes, as the reference library does.
Result<std::vector<uint8_t>> serialize_safetensors(const std::vector<SafetensorsTensorF32>& tensors,
                                                   const std::map<std::string, std::string>& metadata);

}  // namespace kvtc
