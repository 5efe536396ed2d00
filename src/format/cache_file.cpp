// The cache file (docs/CACHE_LAYOUT.md): safetensors with k.<layer>, v.<layer> (and q.<layer>) tensors
// and the shape in its metadata; read into, and written from, a KVCache.
#include <charconv>
#include <cmath>
#include <map>
#include <new>
#include <set>

#include "core/cache_rules.hpp"
#include "format/safetensors.hpp"
#include "kvtc/cache.hpp"
#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc {
namespace {

using namespace cache_rules;

// The whole string must be the number: "12x", " 12" and "" are refused.
bool parse_int(const std::string& s, int64_t* out) {
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, *out);
  return r.ec == std::errc() && r.ptr == end && !s.empty();
}
bool parse_double(const std::string& s, double* out) {
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, *out);
  return r.ec == std::errc() && r.ptr == end && !s.empty() && std::isfinite(*out);
}

Result<int64_t> required_int(const std::map<std::string, std::string>& meta, const std::string& key, int64_t lo,
                             int64_t hi) {
  const auto it = meta.find(key);
  if (it == meta.end()) return invalid_argument("metadata key '" + key + "' is missing");
  int64_t v;
  if (!parse_int(it->second, &v)) return invalid_argument("metadata " + key + "='" + it->second + "' is not an integer");
  if (v < lo || v > hi)
    return invalid_argument("metadata " + key + "=" + it->second + " is outside [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]");
  return v;
}

// rope_scaling = "llama3:factor=<f>,low=<f>,high=<f>,orig=<f>" (all four keys, any order).
Status parse_rope_scaling(const std::string& text, RopeParams* rope) {
  const std::string prefix = "llama3:";
  if (text.compare(0, prefix.size(), prefix) != 0)
    return unsupported("metadata rope_scaling='" + text + "': only \"llama3:...\" scaling is supported");
  std::map<std::string, double> values;
  size_t pos = prefix.size();
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(pos, comma - pos);
    const size_t eq = item.find('=');
    double v;
    if (eq == std::string::npos || !parse_double(item.substr(eq + 1), &v))
      return invalid_argument("metadata rope_scaling='" + text + "': expected key=number, got '" + item + "'");
    const std::string key = item.substr(0, eq);
    if (key != "factor" && key != "low" && key != "high" && key != "orig")
      return invalid_argument("metadata rope_scaling='" + text + "': unknown key '" + key + "'");
    if (!values.emplace(key, v).second)
      return invalid_argument("metadata rope_scaling='" + text + "': key '" + key + "' given twice");
    pos = comma + 1;
  }
  if (values.size() != 4)
    return invalid_argument("metadata rope_scaling='" + text + "': needs factor, low, high and orig");
  rope->llama3_factor = values["factor"];
  rope->llama3_low_freq_factor = values["low"];
  rope->llama3_high_freq_factor = values["high"];
  rope->llama3_original_max_position = values["orig"];
  return Status::ok();
}

// Reads one of k/v/q into fp32 after checking its shape and dtype.
Status read_tensor(const SafetensorsFile& f, const SafetensorsEntry& e, const std::vector<int64_t>& shape,
                   std::vector<float>* out) {
  if (e.shape != shape)
    return invalid_argument(e.name + ": expected shape " + shape_string(shape) + ", got " + shape_string(e.shape));
  out->resize(size_t(e.n_elements()));
  return f.read_f32_into(e, out->data());
}

Result<DType> cache_dtype(const SafetensorsEntry& e) {
  if (e.dtype == "BF16") return DType::kBF16;
  if (e.dtype == "F16") return DType::kF16;
  if (e.dtype == "F32") return DType::kF32;
  return unsupported(e.name + ": dtype " + e.dtype + " is not a cache dtype (BF16, F16 or F32)");
}

Result<KVCache> cache_from_file(const SafetensorsFile& f) {
  KVCache c;
  c.metadata = f.metadata();
  const auto& meta = c.metadata;

  KVTC_ASSIGN_OR_RETURN(const int64_t n_layers, required_int(meta, "num_layers", 1, kMaxLayers));
  KVTC_ASSIGN_OR_RETURN(const int64_t n_kv_heads, required_int(meta, "num_kv_heads", 1, kMaxHeads));
  KVTC_ASSIGN_OR_RETURN(const int64_t head_dim, required_int(meta, "head_dim", 2, kMaxHeadDim));
  KVTC_ASSIGN_OR_RETURN(c.position_offset, required_int(meta, "position_offset", 0, kMaxPosition));
  c.shape.n_layers = int32_t(n_layers);
  c.shape.n_kv_heads = int32_t(n_kv_heads);
  c.shape.head_dim = int32_t(head_dim);
  if (head_dim % 2 != 0) return invalid_argument("metadata head_dim=" + std::to_string(head_dim) + " is odd (RoPE pairs features)");

  const auto theta = meta.find("rope_theta");
  if (theta == meta.end()) return invalid_argument("metadata key 'rope_theta' is missing");
  if (!parse_double(theta->second, &c.shape.rope.theta))
    return invalid_argument("metadata rope_theta='" + theta->second + "' is not a number");
  const auto style = meta.find("rope_style");
  if (style == meta.end()) return invalid_argument("metadata key 'rope_style' is missing");
  if (style->second == "half") {
    c.shape.rope.style = RopeStyle::kHalf;
  } else if (style->second == "interleaved") {
    c.shape.rope.style = RopeStyle::kInterleaved;
  } else {
    return invalid_argument("metadata rope_style='" + style->second + "': expected \"half\" or \"interleaved\"");
  }
  if (const auto it = meta.find("rope_scaling"); it != meta.end())
    KVTC_RETURN_IF_ERROR(parse_rope_scaling(it->second, &c.shape.rope));
  KVTC_RETURN_IF_ERROR(check_rope(c.shape.rope).with_context("metadata"));
  if (meta.count("num_heads")) {
    KVTC_ASSIGN_OR_RETURN(const int64_t n_heads, required_int(meta, "num_heads", 1, kMaxHeads));
    c.n_heads = int32_t(n_heads);
  }
  if (const auto it = meta.find("model"); it != meta.end()) c.model_name = it->second;

  // Every tensor must be one we expect: a stray one means the file is not what its metadata says.
  std::set<std::string> expected;
  for (int l = 0; l < c.shape.n_layers; ++l) {
    for (const char* stream : {"k.", "v.", "q."}) expected.insert(stream + std::to_string(l));
  }
  bool any_q = false;
  for (const auto& e : f.entries()) {
    if (!expected.count(e.name)) return invalid_argument(e.name + ": unexpected tensor in a cache file");
    any_q = any_q || e.name[0] == 'q';
  }

  const SafetensorsEntry* k0 = f.find("k.0");
  if (k0 == nullptr) return invalid_argument("k.0: missing");
  KVTC_ASSIGN_OR_RETURN(c.dtype, cache_dtype(*k0));
  if (k0->shape.size() != 3)
    return invalid_argument("k.0: expected 3 dimensions [num_kv_heads, tokens, head_dim], got " + shape_string(k0->shape));
  c.n_tokens = k0->shape[1];
  if (c.n_tokens > kMaxTokens) return invalid_argument("k.0: " + std::to_string(c.n_tokens) + " tokens is too many");
  const std::vector<int64_t> kv_shape = {n_kv_heads, c.n_tokens, head_dim};

  const SafetensorsEntry* q0 = any_q ? f.find("q.0") : nullptr;
  if (any_q) {
    if (q0 == nullptr) return invalid_argument("q.0: missing (q tensors must exist for all layers or none)");
    if (q0->shape.size() != 3 || q0->shape[0] < 1 || q0->shape[0] > kMaxHeads || q0->shape[1] < 1)
      return invalid_argument("q.0: expected shape [num_heads, n_query, head_dim], got " + shape_string(q0->shape));
    if (c.n_heads != 0 && q0->shape[0] != c.n_heads)
      return invalid_argument("q.0: " + std::to_string(q0->shape[0]) + " heads, metadata num_heads=" +
                              std::to_string(c.n_heads));
    c.n_heads = int32_t(q0->shape[0]);
    c.n_query = q0->shape[1];
  }
  const std::vector<int64_t> q_shape = {c.n_heads, c.n_query, head_dim};

  c.k.resize(size_t(n_layers));
  c.v.resize(size_t(n_layers));
  if (any_q) c.q.resize(size_t(n_layers));
  for (int l = 0; l < c.shape.n_layers; ++l) {
    for (const char* stream : {"k.", "v.", "q."}) {
      const bool is_q = stream[0] == 'q';
      if (is_q && !any_q) continue;
      const std::string name = stream + std::to_string(l);
      const SafetensorsEntry* e = f.find(name);
      if (e == nullptr) return invalid_argument(name + ": missing");
      KVTC_ASSIGN_OR_RETURN(const DType dt, cache_dtype(*e));
      if (dt != c.dtype)
        return invalid_argument(name + ": dtype " + e->dtype + " differs from k.0's " + dtype_name(c.dtype));
      auto& dst = stream[0] == 'k' ? c.k[l] : stream[0] == 'v' ? c.v[l] : c.q[l];
      KVTC_RETURN_IF_ERROR(read_tensor(f, *e, is_q ? q_shape : kv_shape, &dst));
    }
  }
  return c;
}

Result<KVCache> cache_from_file_guarded(const SafetensorsFile& f) {
  try {
    return cache_from_file(f);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "out of memory while reading the cache");
  }
}

}  // namespace

using namespace cache_rules;

void KVCache::sync_metadata() {
  metadata["num_layers"] = std::to_string(shape.n_layers);
  metadata["num_kv_heads"] = std::to_string(shape.n_kv_heads);
  metadata["head_dim"] = std::to_string(shape.head_dim);
  metadata["rope_theta"] = format_number(shape.rope.theta);
  metadata["rope_style"] = rope_style_name(shape.rope.style);
  metadata["position_offset"] = std::to_string(position_offset);
  metadata["tokens"] = std::to_string(n_tokens);
  if (model_name.empty()) {
    metadata.erase("model");
  } else {
    metadata["model"] = model_name;
  }
  if (n_heads > 0) {
    metadata["num_heads"] = std::to_string(n_heads);
  } else {
    metadata.erase("num_heads");
  }
  if (shape.rope.llama3_factor != 0.0) {
    metadata["rope_scaling"] = "llama3:factor=" + format_number(shape.rope.llama3_factor) +
                               ",low=" + format_number(shape.rope.llama3_low_freq_factor) +
                               ",high=" + format_number(shape.rope.llama3_high_freq_factor) +
                               ",orig=" + format_number(shape.rope.llama3_original_max_position);
  } else {
    metadata.erase("rope_scaling");
  }
}

Result<KVCache> parse_cache(const uint8_t* data, size_t size_bytes) {
  KVTC_ASSIGN_OR_RETURN(const SafetensorsFile f, SafetensorsFile::parse_view(data, size_bytes));
  return cache_from_file_guarded(f);
}

Result<KVCache> read_cache(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  if (!f.is_ok()) return f.status();  // already names the path
  auto c = cache_from_file_guarded(f.value());
  if (!c.is_ok()) return c.status().with_context(path);
  return c;
}

Result<std::vector<uint8_t>> serialize_cache(const KVCache& cache) {
  KVTC_RETURN_IF_ERROR(cache.validate());
  // The typed fields are the truth: a copy of the metadata is brought in line with them, so a file
  // written after editing the cache (fewer tokens, another offset) never contradicts itself.
  KVCache meta_only;
  meta_only.shape = cache.shape;
  meta_only.n_tokens = cache.n_tokens;
  meta_only.position_offset = cache.position_offset;
  meta_only.n_heads = cache.n_heads;
  meta_only.model_name = cache.model_name;
  meta_only.metadata = cache.metadata;
  meta_only.sync_metadata();

  const int64_t n_layers = cache.shape.n_layers;
  const std::vector<int64_t> kv_shape = {cache.shape.n_kv_heads, cache.n_tokens, cache.shape.head_dim};
  const std::vector<int64_t> q_shape = {cache.n_heads, cache.n_query, cache.shape.head_dim};
  std::vector<SafetensorsTensorF32> tensors;
  for (int64_t l = 0; l < n_layers; ++l) {
    tensors.push_back({"k." + std::to_string(l), cache.dtype, kv_shape, cache.k[l].data()});
    tensors.push_back({"v." + std::to_string(l), cache.dtype, kv_shape, cache.v[l].data()});
    if (cache.n_query > 0) tensors.push_back({"q." + std::to_string(l), cache.dtype, q_shape, cache.q[l].data()});
  }
  return serialize_safetensors(tensors, meta_only.metadata);
}

Status write_cache(const KVCache& cache, const std::string& path) {
  auto bytes = serialize_cache(cache);
  if (!bytes.is_ok()) return bytes.status().with_context(path);
  return write_file_atomic(path, bytes.value());
}

}  // namespace kvtc
