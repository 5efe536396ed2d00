#include "engine/gguf.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>

#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {
namespace {

// Values are read with memcpy in host order; the format (as llama.cpp writes it) is little-endian.
static_assert(std::endian::native == std::endian::little, "kvtc assumes a little-endian host");

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint64_t kDefaultAlignmentBytes = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr size_t kFixedHeaderBytes = 4 + 4 + 8 + 8;
// The smallest encodings, for bounding counts by the bytes left before anything is reserved: a
// metadata entry is an empty key (8-byte length) + uint32 type + a 1-byte value; a tensor info is an
// empty name + uint32 n_dims + one uint64 dim + uint32 type + uint64 offset.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
// Reserving for a claimed count is capped; beyond it vectors grow as elements actually parse.
constexpr uint64_t kMaxReserve = uint64_t(1) << 16;

struct TypeTraits {
  GgmlType type;
  const char* name;
  int64_t block_elements;
  int64_t block_bytes;
};

// Block geometry from ggml-common.h's block_* structs (QK_K = 256). gguf-py's table differs for Q8_1
// (it still has the old 40-byte fp32 block); ggml's 36 (two fp16 + 32 int8) is what files hold.
constexpr TypeTraits kTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},           {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},       {GgmlType::kQ4_1, "Q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", 32, 22},       {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},       {GgmlType::kQ8_1, "Q8_1", 32, 36},
    {GgmlType::kQ2_K, "Q2_K", 256, 84},      {GgmlType::kQ3_K, "Q3_K", 256, 110},
    {GgmlType::kQ4_K, "Q4_K", 256, 144},     {GgmlType::kQ5_K, "Q5_K", 256, 176},
    {GgmlType::kQ6_K, "Q6_K", 256, 210},     {GgmlType::kQ8_K, "Q8_K", 256, 292},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 66}, {GgmlType::kIQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 98}, {GgmlType::kIQ1_S, "IQ1_S", 256, 50},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 18},   {GgmlType::kIQ3_S, "IQ3_S", 256, 110},
    {GgmlType::kIQ2_S, "IQ2_S", 256, 82},    {GgmlType::kIQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::kI8, "I8", 1, 1},             {GgmlType::kI16, "I16", 1, 2},
    {GgmlType::kI32, "I32", 1, 4},           {GgmlType::kI64, "I64", 1, 8},
    {GgmlType::kF64, "F64", 1, 8},           {GgmlType::kIQ1_M, "IQ1_M", 256, 56},
    {GgmlType::kBF16, "BF16", 1, 2},         {GgmlType::kTQ1_0, "TQ1_0", 256, 54},
    {GgmlType::kTQ2_0, "TQ2_0", 256, 66},    {GgmlType::kMXFP4, "MXFP4", 32, 17},
};

const TypeTraits* find_type(uint32_t type) {
  for (const auto& t : kTypes)
    if (uint32_t(t.type) == type) return &t;
  return nullptr;
}

const char* value_type_name(uint32_t t) {
  static const char* const kNames[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                       "bool",  "string", "array",  "uint64", "int64",  "float64"};
  return t < std::size(kNames) ? kNames[t] : "unknown";
}

// Bytes of one scalar value in the file; 0 for string, array and unknown types.
uint64_t scalar_bytes(uint32_t t) {
  switch (GgufValueType(t)) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
    default: return 0;
  }
}

bool is_float_type(uint32_t t) { return t == uint32_t(GgufValueType::kFloat32) || t == uint32_t(GgufValueType::kFloat64); }

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

std::string dims_string(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Reads the file front to back. Every read checks the bytes left first; callers phrase the error, so
// that per-element reads of a 50,000-entry vocabulary build no message strings.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size_bytes) : data_(data), size_bytes_(size_bytes) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_bytes_ - pos_; }

  template <typename T>
  bool get(T* v) {
    if (left() < sizeof(T)) return false;
    std::memcpy(v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  // A string: uint64 length, then that many bytes. *length_out keeps the claimed length for messages.
  bool get_string(std::string* s, uint64_t* length_out) {
    uint64_t n = 0;
    *length_out = 0;
    if (!get(&n)) return false;
    *length_out = n;
    if (n > left()) return false;
    s->assign(reinterpret_cast<const char*>(data_ + pos_), size_t(n));
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* data_;
  uint64_t size_bytes_;
  uint64_t pos_ = 0;
};

class Parser {
 public:
  Parser(const uint8_t* data, size_t size_bytes) : c_(data, size_bytes), size_bytes_(size_bytes) {}

  Status header(uint32_t* version, uint64_t* n_tensors, uint64_t* n_kv);
  Status metadata_entry(uint64_t index, std::map<std::string, GgufValue>* metadata);
  Status tensor_info(uint64_t index, uint64_t alignment_bytes, GgufTensorInfo* t);
  uint64_t pos() const { return c_.pos(); }

 private:
  Status truncated(const std::string& what) const {
    return corrupt("gguf: file ends at byte " + std::to_string(c_.pos()) + " inside " + what + " (file of " +
                   std::to_string(size_bytes_) + " bytes)");
  }
  Status string_field(std::string* s, const std::string& what);
  Status value(const std::string& key, uint32_t type, GgufValue* v);
  Status array(const std::string& key, GgufValue* v);
  // One scalar of type t into *i or *f; false when the file ends or a uint64 is above INT64_MAX
  // (*too_big tells which).
  bool scalar(uint32_t t, int64_t* i, double* f, bool* too_big);

  Cursor c_;
  uint64_t size_bytes_;
};

Status Parser::header(uint32_t* version, uint64_t* n_tensors, uint64_t* n_kv) {
  uint32_t magic = 0;
  if (size_bytes_ < 4 || !c_.get(&magic))
    return corrupt("gguf: " + std::to_string(size_bytes_) + " bytes, too short for a GGUF file");
  if (magic != kGgufMagic) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", magic);
    return corrupt(std::string("gguf: not a GGUF file (the first 4 bytes are ") + hex + ", not \"GGUF\")");
  }
  if (!c_.get(version)) return truncated("the version");
  if (*version == 1)
    return unsupported("gguf: version 1 (files from before August 2023) is not supported; convert the model again "
                       "with a current llama.cpp");
  if (*version != 2 && *version != 3) {
    // A big-endian writer stores the version 2 or 3 with its bytes reversed.
    if (*version == 0x02000000u || *version == 0x03000000u)
      return unsupported("gguf: a big-endian GGUF file; only little-endian files are supported");
    return unsupported("gguf: version " + std::to_string(*version) + " is not supported (versions 2 and 3 are)");
  }
  if (!c_.get(n_tensors)) return truncated("the tensor count");
  if (!c_.get(n_kv)) return truncated("the metadata count");
  // Counts are checked against what the rest of the file could hold before anything is reserved.
  if (*n_kv > c_.left() / kMinKvBytes)
    return corrupt("gguf: header claims " + std::to_string(*n_kv) + " metadata entries; the " +
                   std::to_string(c_.left()) + " bytes after the header cannot hold that many");
  if (*n_tensors > (c_.left() - *n_kv * kMinKvBytes) / kMinTensorInfoBytes)
    return corrupt("gguf: header claims " + std::to_string(*n_tensors) + " tensors; the " +
                   std::to_string(c_.left()) + " bytes after the header cannot hold that many");
  return Status::ok();
}

Status Parser::string_field(std::string* s, const std::string& what) {
  uint64_t length = 0;
  const uint64_t at = c_.pos();
  if (c_.get_string(s, &length)) return Status::ok();
  if (c_.pos() == at) return truncated("the length of " + what);
  return corrupt("gguf: " + what + " at byte " + std::to_string(at) + " claims " + std::to_string(length) +
                 " bytes, but only " + std::to_string(c_.left()) + " are left in the file");
}

bool Parser::scalar(uint32_t t, int64_t* i, double* f, bool* too_big) {
  *too_big = false;
  switch (GgufValueType(t)) {
    case GgufValueType::kUint8: { uint8_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kInt8: { int8_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kUint16: { uint16_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kInt16: { int16_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kUint32: { uint32_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kInt32: { int32_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kInt64: { int64_t v; if (!c_.get(&v)) return false; *i = v; return true; }
    case GgufValueType::kUint64: {
      uint64_t v;
      if (!c_.get(&v)) return false;
      if (v > uint64_t(std::numeric_limits<int64_t>::max())) {
        *too_big = true;
        return false;
      }
      *i = int64_t(v);
      return true;
    }
    // Any nonzero byte is true, as llama.cpp reads it.
    case GgufValueType::kBool: { uint8_t v; if (!c_.get(&v)) return false; *i = v != 0; return true; }
    case GgufValueType::kFloat32: { float v; if (!c_.get(&v)) return false; *f = v; return true; }
    case GgufValueType::kFloat64: { double v; if (!c_.get(&v)) return false; *f = v; return true; }
    default: return false;  // not reached: callers pass scalar types only
  }
}

Status Parser::array(const std::string& key, GgufValue* v) {
  uint32_t elem = 0;
  uint64_t count = 0;
  if (!c_.get(&elem) || !c_.get(&count)) return truncated("the array header of metadata key " + quoted(key));
  if (elem == uint32_t(GgufValueType::kArray))
    return unsupported("gguf: metadata key " + quoted(key) + " holds an array of arrays, which is not supported");
  const bool is_string = elem == uint32_t(GgufValueType::kString);
  const uint64_t min_elem_bytes = is_string ? 8 : scalar_bytes(elem);
  if (min_elem_bytes == 0)
    return corrupt("gguf: metadata key " + quoted(key) + ": unknown array element type " + std::to_string(elem));
  if (count > c_.left() / min_elem_bytes)
    return corrupt("gguf: metadata key " + quoted(key) + " claims an array of " + std::to_string(count) + " " +
                   value_type_name(elem) + " values; the " + std::to_string(c_.left()) +
                   " bytes left in the file cannot hold that many");
  v->elem_type = GgufValueType(elem);
  const size_t reserve = size_t(std::min(count, kMaxReserve));
  if (is_string) {
    v->strings.reserve(reserve);
    for (uint64_t k = 0; k < count; ++k) {
      v->strings.emplace_back();
      std::string* s = &v->strings.back();
      uint64_t length = 0;
      if (!c_.get_string(s, &length))
        return corrupt("gguf: metadata key " + quoted(key) + ": string " + std::to_string(k) + " of " +
                       std::to_string(count) + " runs past the end of the file");
    }
    return Status::ok();
  }
  const bool is_float = is_float_type(elem);
  if (is_float) v->floats.reserve(reserve);
  else v->ints.reserve(reserve);
  for (uint64_t k = 0; k < count; ++k) {
    int64_t i = 0;
    double f = 0.0;
    bool too_big = false;
    if (!scalar(elem, &i, &f, &too_big)) {
      if (too_big)
        return corrupt("gguf: metadata key " + quoted(key) + ": uint64 element " + std::to_string(k) +
                       " is above 2^63 - 1, which this reader cannot represent");
      return truncated("the array of metadata key " + quoted(key));  // not reached: count was bounded
    }
    if (is_float) v->floats.push_back(f);
    else v->ints.push_back(i);
  }
  return Status::ok();
}

Status Parser::value(const std::string& key, uint32_t type, GgufValue* v) {
  v->type = GgufValueType(type);
  if (type == uint32_t(GgufValueType::kString)) return string_field(&v->s, "the value of metadata key " + quoted(key));
  if (type == uint32_t(GgufValueType::kArray)) return array(key, v);
  if (scalar_bytes(type) == 0)
    return corrupt("gguf: metadata key " + quoted(key) + " has unknown value type " + std::to_string(type));
  bool too_big = false;
  if (!scalar(type, &v->i, &v->f, &too_big)) {
    if (too_big)
      return corrupt("gguf: metadata key " + quoted(key) + ": uint64 value is above 2^63 - 1, which this reader "
                     "cannot represent");
    return truncated("the value of metadata key " + quoted(key));
  }
  return Status::ok();
}

Status Parser::metadata_entry(uint64_t index, std::map<std::string, GgufValue>* metadata) {
  std::string key;
  KVTC_RETURN_IF_ERROR(string_field(&key, "the key of metadata entry " + std::to_string(index)));
  uint32_t type = 0;
  if (!c_.get(&type)) return truncated("the value type of metadata key " + quoted(key));
  GgufValue v;
  KVTC_RETURN_IF_ERROR(value(key, type, &v));
  if (!metadata->emplace(key, std::move(v)).second)
    return corrupt("gguf: metadata key " + quoted(key) + " appears twice");
  return Status::ok();
}

Status Parser::tensor_info(uint64_t index, uint64_t alignment_bytes, GgufTensorInfo* t) {
  KVTC_RETURN_IF_ERROR(string_field(&t->name, "the name of tensor " + std::to_string(index)));
  const std::string what = "tensor " + quoted(t->name);
  uint32_t n_dims = 0;
  if (!c_.get(&n_dims)) return truncated("the dimension count of " + what);
  if (n_dims < 1 || n_dims > kMaxDims)
    return corrupt("gguf: " + what + " has " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
  t->dims.assign(n_dims, 0);
  for (uint32_t d = 0; d < n_dims; ++d)
    if (!c_.get(&t->dims[d])) return truncated("the shape of " + what);
  uint64_t offset_bytes = 0;
  if (!c_.get(&t->type) || !c_.get(&offset_bytes)) return truncated("the type and offset of " + what);
  t->offset_bytes = offset_bytes;

  int64_t n_elements = 1;
  for (int64_t d : t->dims) {
    if (d < 1) return corrupt("gguf: " + what + " has shape ne=" + dims_string(t->dims) + "; every dimension must be >= 1");
    if (__builtin_mul_overflow(n_elements, d, &n_elements))
      return corrupt("gguf: " + what + " has shape ne=" + dims_string(t->dims) + ", too many elements");
  }
  const TypeTraits* traits = find_type(t->type);
  if (traits == nullptr)
    return unsupported("gguf: " + what + " has ggml type " + std::to_string(t->type) +
                       ", which this reader does not know");
  if (t->dims[0] % traits->block_elements != 0)
    return corrupt("gguf: " + what + ": row length ne[0] = " + std::to_string(t->dims[0]) + " is not a multiple of " +
                   traits->name + "'s block of " + std::to_string(traits->block_elements) + " values");
  int64_t size_bytes = 0;
  if (__builtin_mul_overflow(n_elements / traits->block_elements, traits->block_bytes, &size_bytes))
    return corrupt("gguf: " + what + " of shape ne=" + dims_string(t->dims) + " overflows its byte size");
  t->size_bytes = uint64_t(size_bytes);
  if (t->offset_bytes % alignment_bytes != 0)
    return corrupt("gguf: " + what + " starts at data offset " + std::to_string(t->offset_bytes) +
                   ", not a multiple of the file's alignment of " + std::to_string(alignment_bytes) + " bytes");
  return Status::ok();
}

// general.alignment, if present: a uint32 power of two (ggml refuses anything else too).
Result<uint64_t> alignment_of(const std::map<std::string, GgufValue>& metadata) {
  const auto it = metadata.find("general.alignment");
  if (it == metadata.end()) return kDefaultAlignmentBytes;
  const GgufValue& v = it->second;
  if (v.type != GgufValueType::kUint32)
    return corrupt(std::string("gguf: metadata key \"general.alignment\" is a ") + value_type_name(uint32_t(v.type)) +
                   ", not a uint32");
  if (v.i == 0 || !std::has_single_bit(uint64_t(v.i)))
    return corrupt("gguf: metadata key \"general.alignment\" is " + std::to_string(v.i) + ", not a power of two");
  return uint64_t(v.i);
}

}  // namespace

std::string ggml_type_name(uint32_t type) {
  const TypeTraits* t = find_type(type);
  return t != nullptr ? t->name : "type " + std::to_string(type);
}

Result<GgmlBlock> ggml_block(uint32_t type) {
  const TypeTraits* t = find_type(type);
  if (t == nullptr) return unsupported("ggml type " + std::to_string(type) + " is not known to this reader");
  return GgmlBlock{t->block_elements, t->block_bytes};
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kUint16: case GgufValueType::kInt16:
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kUint64: case GgufValueType::kInt64:
    case GgufValueType::kBool:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_float() const { return is_float_type(uint32_t(type)); }

size_t GgufValue::array_size() const {
  if (type != GgufValueType::kArray) return 0;
  if (elem_type == GgufValueType::kString) return strings.size();
  return is_float_type(uint32_t(elem_type)) ? floats.size() : ints.size();
}

int64_t GgufTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // checked against overflow when parsed
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return {dims.rbegin(), dims.rend()}; }

Result<GgufFile> GgufFile::parse_view(const uint8_t* data, size_t size_bytes) {
  if (data == nullptr) size_bytes = 0;
  GgufFile f;
  try {
    Parser p(data, size_bytes);
    uint64_t n_tensors = 0, n_kv = 0;
    KVTC_RETURN_IF_ERROR(p.header(&f.version_, &n_tensors, &n_kv));
    for (uint64_t k = 0; k < n_kv; ++k) KVTC_RETURN_IF_ERROR(p.metadata_entry(k, &f.metadata_));
    KVTC_ASSIGN_OR_RETURN(f.alignment_bytes_, alignment_of(f.metadata_));

    f.tensors_.reserve(size_t(n_tensors));  // bounded by the file size in header()
    for (uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensorInfo t;
      KVTC_RETURN_IF_ERROR(p.tensor_info(k, f.alignment_bytes_, &t));
      if (!f.tensor_index_.emplace(t.name, f.tensors_.size()).second)
        return corrupt("gguf: tensor name " + quoted(t.name) + " appears twice");
      f.tensors_.push_back(std::move(t));
    }

    // The data section starts at the end of the tensor infos padded to the alignment. A file without
    // tensor data may end before that padding, so the start is clamped to the file.
    const uint64_t header_end = p.pos();
    const uint64_t data_start = (header_end + f.alignment_bytes_ - 1) / f.alignment_bytes_ * f.alignment_bytes_;
    const uint64_t data_bytes = data_start < size_bytes ? size_bytes - data_start : 0;
    for (const GgufTensorInfo& t : f.tensors_) {
      if (t.offset_bytes > data_bytes || t.size_bytes > data_bytes - t.offset_bytes)
        return corrupt("gguf: tensor " + quoted(t.name) + " (" + ggml_type_name(t.type) + ", " +
                       std::to_string(t.size_bytes) + " bytes at data offset " + std::to_string(t.offset_bytes) +
                       ") runs past the end of the data section (" + std::to_string(data_bytes) +
                       " bytes from file offset " + std::to_string(data_start) + "); is the file truncated?");
    }
    f.data_ = data + std::min<uint64_t>(data_start, size_bytes);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "gguf: out of memory while reading the header");
  } catch (const std::exception& ex) {  // vector length limits; every size was bounded first, so a backstop
    return corrupt(std::string("gguf: ") + ex.what());
  }
  return f;
}

Result<GgufFile> GgufFile::open(const std::string& path) {
  // Model files are mapped, not read: a model's gigabytes load on demand as tensors are dequantised.
  KVTC_ASSIGN_OR_RETURN(MappedFile m, map_file(path));
  if (m.size_bytes < kFixedHeaderBytes)
    return corrupt(path + ": " + std::to_string(m.size_bytes) + " bytes, too short for a GGUF file");
  auto f = parse_view(m.data, m.size_bytes);
  if (!f.is_ok()) return f.status().with_context(path);
  f->holder_ = std::move(m.holder);
  return f;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

std::string type_of(const GgufValue& v) {
  if (v.type == GgufValueType::kArray) return std::string("an array of ") + value_type_name(uint32_t(v.elem_type));
  return std::string("a ") + value_type_name(uint32_t(v.type));
}

Status wrong_type(const std::string& key, const GgufValue& v, const char* wanted) {
  return invalid_argument("gguf: metadata key " + quoted(key) + " is " + type_of(v) + ", expected " + wanted);
}

Status absent(const std::string& key) { return invalid_argument("gguf: metadata key " + quoted(key) + " is absent"); }

}  // namespace

Result<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return absent(key);
  if (v->type != GgufValueType::kString) return wrong_type(key, *v, "a string");
  return v->s;
}

Result<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return absent(key);
  if (!v->is_integer()) return wrong_type(key, *v, "an integer");
  return v->i;
}

Result<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return absent(key);
  if (v->is_float()) return v->f;
  if (v->is_integer()) return double(v->i);
  return wrong_type(key, *v, "a number");
}

Result<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return absent(key);
  if (v->type != GgufValueType::kBool) return wrong_type(key, *v, "a bool");
  return v->i != 0;
}

Result<int64_t> GgufFile::get_int_or(const std::string& key, int64_t fallback) const {
  return find(key) == nullptr ? Result<int64_t>(fallback) : get_int(key);
}

Result<double> GgufFile::get_float_or(const std::string& key, double fallback) const {
  return find(key) == nullptr ? Result<double>(fallback) : get_float(key);
}

Result<bool> GgufFile::get_bool_or(const std::string& key, bool fallback) const {
  return find(key) == nullptr ? Result<bool>(fallback) : get_bool(key);
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Status GgufFile::read_f32_into(const GgufTensorInfo& t, float* out) const {
  const Status s = gguf_dequantize(t.type, tensor_data(t), t.size_bytes, t.n_elements(), out);
  return s.is_ok() ? s : s.with_context("tensor " + quoted(t.name));
}

}  // namespace kvtc::engine
