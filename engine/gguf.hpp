// A reader for GGUF model files (llama.cpp's format, versions 2 and 3), as the engine needs it:
// the metadata key/value table, the tensor table, and fp32 dequantisation of the tensor types that
// real files use.
//
// Layout (all little-endian): "GGUF", uint32 version, uint64 tensor count, uint64 metadata count;
// metadata entries (string key, uint32 value type, value); tensor infos (string name, uint32 n_dims,
// n_dims x uint64 ne (ne[0] innermost), uint32 ggml type, uint64 offset within the data section);
// padding to `general.alignment` (default 32); the data section. Strings are uint64 length + bytes.
//
// Every count, length, dimension and offset is checked against the file size before it is used, so
// a truncated or malformed file gives kCorrupt (or kUnsupported for a well-formed feature this
// reader does not handle: version 1, nested arrays), never a crash or an out-of-bounds read.
// fuzz/fuzz_gguf.cpp drives parse_view with arbitrary bytes.
//
// Shapes: GgufTensorInfo::dims are GGUF's ne[] (innermost first); shape() gives them reversed, the
// row-major shape that safetensors, PyTorch and the engine use ([rows][cols] for a weight matrix).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc::engine {

// ggml tensor types (ggml.h's enum ggml_type values, as stored in the file).
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22,
  kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39,
};

// Name of a ggml type as ggml prints it ("Q4_K"), or "type <n>" for an unknown value.
std::string ggml_type_name(uint32_t type);

// Block geometry of a type: `block_elements` values are stored in `block_bytes` bytes. Every type of
// the enum above has one; unknown values give kUnsupported naming the value.
struct GgmlBlock {
  int64_t block_elements = 0;
  int64_t block_bytes = 0;
};
Result<GgmlBlock> ggml_block(uint32_t type);

// True when gguf_dequantize handles `type`: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
// Q5_K, Q6_K.
bool gguf_can_dequantize(uint32_t type);

// Converts `n_elements` values of `type` (a multiple of its block size) stored at src[0, src_bytes)
// into out[0, n_elements), exactly as ggml's dequantize_row_* and gguf-py's dequantize compute them
// (fp16 scales widened to fp32, then fp32 arithmetic). A type it cannot dequantise gives kUnsupported
// with the type's name; src_bytes smaller than the blocks need gives kCorrupt.
Status gguf_dequantize(uint32_t type, const uint8_t* src, size_t src_bytes, int64_t n_elements, float* out);

// GGUF metadata value types.
enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6, kBool = 7,
  kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

// One metadata value. Scalars: integers and bools in `i` (uint64 values above INT64_MAX are
// kCorrupt), floats in `f`, strings in `s`. Arrays (type kArray, element type in `elem_type`):
// integer and bool elements in `ints`, float elements in `floats`, string elements in `strings`.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  GgufValueType elem_type = GgufValueType::kUint8;  // arrays only
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;

  bool is_integer() const;  // a scalar integer type or bool
  bool is_float() const;    // kFloat32 or kFloat64
  bool is_array_of(GgufValueType t) const { return type == GgufValueType::kArray && elem_type == t; }
  size_t array_size() const;  // elements of an array (0 for a scalar)
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ne[0..n_dims): innermost first
  uint32_t type = 0;          // GgmlType value
  uint64_t offset_bytes = 0;  // from the start of the data section
  uint64_t size_bytes = 0;    // n_elements / block_elements * block_bytes
  int64_t n_elements() const;
  std::vector<int64_t> shape() const;  // dims reversed (row-major, outermost first)
};

// A parsed GGUF file. Holds the bytes in a read-only memory map (open) or refers to a caller's buffer
// (parse_view); tensor data stays valid as long as this object (or a copy of it) lives.
class GgufFile {
 public:
  static Result<GgufFile> open(const std::string& path);
  // Parses without copying; `data` must outlive the object and every copy of it.
  static Result<GgufFile> parse_view(const uint8_t* data, size_t size_bytes);

  uint32_t version() const { return version_; }
  uint64_t alignment_bytes() const { return alignment_bytes_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;  // nullptr when absent

  // Typed lookups: kInvalidArgument naming the key when it is absent or of another type.
  Result<std::string> get_string(const std::string& key) const;
  Result<int64_t> get_int(const std::string& key) const;   // any integer type
  Result<double> get_float(const std::string& key) const;  // float32/float64 (integers accepted)
  Result<bool> get_bool(const std::string& key) const;
  // The same, with `fallback` when the key is absent (a present key of another type is still an error).
  Result<int64_t> get_int_or(const std::string& key, int64_t fallback) const;
  Result<double> get_float_or(const std::string& key, double fallback) const;
  Result<bool> get_bool_or(const std::string& key, bool fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr when absent
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return data_ + t.offset_bytes; }
  // Dequantises tensor `t` into out[0, t.n_elements()).
  Status read_f32_into(const GgufTensorInfo& t, float* out) const;

 private:
  std::shared_ptr<void> holder_;   // the memory map, when opened from a path
  const uint8_t* data_ = nullptr;  // start of the data section
  uint32_t version_ = 0;
  uint64_t alignment_bytes_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;  // name -> index in tensors_
};

}  // namespace kvtc::engine
