#include "format/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <new>
#include <set>

#include <nlohmann/json.hpp>

#include "util/file_io.hpp"
#include "util/half.hpp"
#include "util/status_macros.hpp"

namespace kvtc {
namespace {

// Element bytes are read and written with memcpy in host order; the format is little-endian.
static_assert(std::endian::native == std::endian::little, "kvtc assumes a little-endian host");

constexpr uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;  // as the reference library
constexpr int kMaxJsonDepth = 16;  // a valid header nests 3 deep; deeper input is rejected before parsing

// Bytes per element of the dtypes the format defines (0: unknown name).
int safetensors_dtype_size(const std::string& dtype) {
  static const std::pair<const char*, int> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8}};
  for (const auto& [name, size] : kSizes)
    if (dtype == name) return size;
  return 0;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Deepest nesting of [ and { outside strings. nlohmann's parser keeps a stack per level, so a header of
// a million '[' would cost memory and time for nothing; real headers are 3 levels deep.
int json_depth(const char* p, size_t n) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    const char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > kMaxJsonDepth) return max_depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

// A JSON integer >= 0 (floats, negatives and other types are refused).
bool get_u64(const nlohmann::json& j, uint64_t* out) {
  if (!j.is_number_integer()) return false;
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  const int64_t v = j.get<int64_t>();
  if (v < 0) return false;
  *out = uint64_t(v);
  return true;
}

Status parse_entry(const std::string& name, const nlohmann::json& j, uint64_t data_size_bytes,
                   SafetensorsEntry* e) {
  if (!j.is_object()) return corrupt(name + ": header entry is not an object");
  const auto dt = j.find("dtype");
  const auto shape = j.find("shape");
  const auto offsets = j.find("data_offsets");
  if (dt == j.end() || !dt->is_string()) return corrupt(name + ": missing or non-string \"dtype\"");
  if (shape == j.end() || !shape->is_array()) return corrupt(name + ": missing or non-array \"shape\"");
  if (offsets == j.end() || !offsets->is_array() || offsets->size() != 2)
    return corrupt(name + ": \"data_offsets\" must be [begin, end]");
  e->name = name;
  e->dtype = dt->get<std::string>();
  const int elem_bytes = safetensors_dtype_size(e->dtype);
  if (elem_bytes == 0) return unsupported(name + ": unknown dtype \"" + e->dtype + "\"");

  // Element count with overflow checks: every dimension and the product stay below 2^62.
  uint64_t n_elements = 1;
  e->shape.clear();
  for (const auto& d : *shape) {
    uint64_t dim;
    if (!get_u64(d, &dim) || dim > (uint64_t(1) << 62))
      return corrupt(name + ": shape entries must be integers in [0, 2^62]");
    e->shape.push_back(int64_t(dim));
    if (__builtin_mul_overflow(n_elements, dim, &n_elements) || n_elements > (uint64_t(1) << 62))
      return corrupt(name + ": shape " + shape_string(e->shape) + " has too many elements");
  }
  uint64_t expected_bytes;
  if (__builtin_mul_overflow(n_elements, uint64_t(elem_bytes), &expected_bytes))
    return corrupt(name + ": tensor size overflows");

  uint64_t begin, end;
  if (!get_u64((*offsets)[0], &begin) || !get_u64((*offsets)[1], &end))
    return corrupt(name + ": data_offsets must be non-negative integers");
  if (begin > end || end > data_size_bytes)
    return corrupt(name + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] outside the data section of " + std::to_string(data_size_bytes) + " bytes");
  if (end - begin != expected_bytes)
    return corrupt(name + ": " + e->dtype + " " + shape_string(e->shape) + " needs " +
                   std::to_string(expected_bytes) + " bytes, data_offsets give " + std::to_string(end - begin));
  e->offset_bytes = begin;
  e->size_bytes = end - begin;
  return Status::ok();
}

}  // namespace

int64_t SafetensorsEntry::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // checked against overflow when parsed
  return n;
}

namespace {

// Checks the header and lists metadata and entries; touches no tensor data.
Status parse_header(const uint8_t* data, size_t size_bytes, std::map<std::string, std::string>* metadata,
                    std::vector<SafetensorsEntry>* entries, uint64_t* data_start_bytes) {
  if (data == nullptr || size_bytes < 8)
    return corrupt("safetensors: " + std::to_string(size_bytes) + " bytes, too short for the header length");
  uint64_t header_bytes;
  std::memcpy(&header_bytes, data, 8);
  if (header_bytes > size_bytes - 8)
    return corrupt("safetensors: header length " + std::to_string(header_bytes) + " exceeds the file (" +
                   std::to_string(size_bytes) + " bytes)");
  if (header_bytes > kMaxHeaderBytes)
    return corrupt("safetensors: header length " + std::to_string(header_bytes) + " over the 100 MB limit");
  const char* header = reinterpret_cast<const char*>(data + 8);
  if (json_depth(header, header_bytes) > kMaxJsonDepth) return corrupt("safetensors: header nests too deep");
  const nlohmann::json root = nlohmann::json::parse(header, header + header_bytes, nullptr,
                                                    /*allow_exceptions=*/false);
  if (root.is_discarded()) return corrupt("safetensors: header is not valid JSON");
  if (!root.is_object()) return corrupt("safetensors: header is not a JSON object");

  const uint64_t data_size_bytes = size_bytes - 8 - header_bytes;
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return corrupt("safetensors: __metadata__ is not an object");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) return corrupt("safetensors: __metadata__[\"" + key + "\"] is not a string");
        (*metadata)[key] = v.get<std::string>();
      }
      continue;
    }
    SafetensorsEntry e;
    KVTC_RETURN_IF_ERROR(parse_entry(name, value, data_size_bytes, &e));
    entries->push_back(std::move(e));
  }
  // File order (by offset) is what users expect when listing; names break ties of empty tensors.
  std::sort(entries->begin(), entries->end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.offset_bytes != b.offset_bytes ? a.offset_bytes < b.offset_bytes : a.name < b.name;
  });
  *data_start_bytes = 8 + header_bytes;
  return Status::ok();
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::parse_view(const uint8_t* data, size_t size_bytes) {
  SafetensorsFile f;
  uint64_t data_start = 0;
  try {
    KVTC_RETURN_IF_ERROR(parse_header(data, size_bytes, &f.metadata_, &f.entries_, &data_start));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "safetensors header: out of memory");
  } catch (const std::exception& ex) {  // every path checks JSON types first; this is a backstop
    return corrupt(std::string("safetensors header: ") + ex.what());
  }
  f.data_ = data + data_start;
  return f;
}

Result<SafetensorsFile> SafetensorsFile::parse(std::vector<uint8_t> bytes) {
  auto buffer = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  KVTC_ASSIGN_OR_RETURN(SafetensorsFile f, parse_view(buffer->data(), buffer->size()));
  f.holder_ = std::move(buffer);
  return f;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  KVTC_ASSIGN_OR_RETURN(MappedFile m, map_file(path));
  if (m.size_bytes < 8)
    return corrupt(path + ": " + std::to_string(m.size_bytes) + " bytes, too short for a safetensors file");
  auto f = parse_view(m.data, m.size_bytes);
  if (!f.is_ok()) return f.status().with_context(path);
  f->holder_ = std::move(m.holder);
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

Status SafetensorsFile::read_f32_into(const SafetensorsEntry& e, float* out) const {
  const uint8_t* src = data(e);
  const int64_t n = e.n_elements();
  if (e.dtype == "F32") {
    if (n > 0) std::memcpy(out, src, size_t(n) * 4);
  } else if (e.dtype == "BF16") {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out[i] = bf16_to_f32(h);
    }
  } else if (e.dtype == "F16") {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out[i] = f16_to_f32(h);
    }
  } else {
    return unsupported(e.name + ": dtype " + e.dtype + " cannot be read as fp32 (BF16, F16 or F32 only)");
  }
  return Status::ok();
}

Result<std::vector<float>> SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) return invalid_argument(name + ": no such tensor");
  std::vector<float> out;
  try {
    out.resize(size_t(e->n_elements()));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, name + ": out of memory for " + std::to_string(e->n_elements()) +
                                                " values");
  }
  KVTC_RETURN_IF_ERROR(read_f32_into(*e, out.data()));
  return out;
}

Result<std::vector<uint8_t>> serialize_safetensors(const std::vector<SafetensorsTensorF32>& tensors,
                                                   const std::map<std::string, std::string>& metadata) {
  try {
    // ordered_json keeps the keys in insertion order: __metadata__ first (as the reference writer),
    // then the tensors in the order given, which is also their order in the data section.
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata) meta[k] = v;
      header["__metadata__"] = std::move(meta);
    }
    std::set<std::string> names;
    std::vector<uint64_t> sizes;
    uint64_t offset = 0;
    for (const auto& t : tensors) {
      if (t.name == "__metadata__" || !names.insert(t.name).second)
        return invalid_argument("safetensors: duplicate or reserved tensor name \"" + t.name + "\"");
      uint64_t n = 1;
      for (int64_t d : t.shape) {
        if (d < 0 || __builtin_mul_overflow(n, uint64_t(d), &n) || n > (uint64_t(1) << 60))
          return invalid_argument(t.name + ": bad shape " + shape_string(t.shape));
      }
      if (dtype_size_bytes(t.dtype) == 0) return invalid_argument(t.name + ": unknown dtype");
      if (n > 0 && t.values == nullptr) return invalid_argument(t.name + ": no values");
      const uint64_t size = n * uint64_t(dtype_size_bytes(t.dtype));
      header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + size}}};
      sizes.push_back(size);
      offset += size;
    }
    std::string text = header.dump();  // throws on invalid UTF-8 in names: caught below
    text.append((8 - text.size() % 8) % 8, ' ');

    std::vector<uint8_t> out(8 + text.size() + offset);
    const uint64_t header_bytes = text.size();
    std::memcpy(out.data(), &header_bytes, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    uint8_t* dst = out.data() + 8 + text.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      const int64_t n = int64_t(sizes[i] / uint64_t(dtype_size_bytes(t.dtype)));
      switch (t.dtype) {
        case DType::kF32:
          if (n > 0) std::memcpy(dst, t.values, size_t(n) * 4);
          break;
        case DType::kBF16:
          for (int64_t j = 0; j < n; ++j) {
            const uint16_t h = f32_to_bf16(t.values[j]);
            std::memcpy(dst + 2 * j, &h, 2);
          }
          break;
        case DType::kF16:
          for (int64_t j = 0; j < n; ++j) {
            const uint16_t h = f32_to_f16(t.values[j]);
            std::memcpy(dst + 2 * j, &h, 2);
          }
          break;
      }
      dst += sizes[i];
    }
    return out;
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "safetensors: out of memory while serialising");
  } catch (const std::exception& ex) {
    return invalid_argument(std::string("safetensors: cannot write header: ") + ex.what());
  }
}

}  // namespace kvtc
