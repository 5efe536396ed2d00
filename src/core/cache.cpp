#include "kvtc/cache.hpp"

#include <charconv>
#include <cmath>
#include <new>
#include <numbers>
#include <set>

#include "core/token_vectors.hpp"
#include "format/safetensors.hpp"
#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc {
namespace {

// Sanity limits: far above any real model, low enough that products of them cannot overflow int64.
constexpr int32_t kMaxLayers = 4096;
constexpr int32_t kMaxHeads = 4096;
constexpr int32_t kMaxHeadDim = 65536;
constexpr int64_t kMaxTokens = int64_t(1) << 32;
constexpr int64_t kMaxPosition = int64_t(1) << 40;

const char* rope_style_name(RopeStyle s) { return s == RopeStyle::kInterleaved ? "interleaved" : "half"; }

// Shortest text that parses back to the same double; integers print without exponent ("100000", not
// "1e+05"), which is what people expect in metadata.
std::string format_number(double v) {
  if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 1e15) return std::to_string(int64_t(v));
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

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

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
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

Status check_rope(const RopeParams& r) {
  if (!std::isfinite(r.theta) || r.theta <= 0.0) return invalid_argument("rope theta must be > 0, got " + format_number(r.theta));
  if (r.style != RopeStyle::kHalf && r.style != RopeStyle::kInterleaved) return invalid_argument("unknown rope style");
  if (r.llama3_factor != 0.0) {
    // Hugging Face's own checks: factor >= 1 and low < high; the wavelength bounds need positive values.
    if (!(r.llama3_factor >= 1.0) || !std::isfinite(r.llama3_factor) || !(r.llama3_low_freq_factor > 0.0) ||
        !(r.llama3_high_freq_factor > r.llama3_low_freq_factor) || !std::isfinite(r.llama3_high_freq_factor) ||
        !(r.llama3_original_max_position > 0.0) || !std::isfinite(r.llama3_original_max_position))
      return invalid_argument("llama3 rope scaling needs factor >= 1, 0 < low < high, orig > 0");
  }
  return Status::ok();
}

Status check_shape(const ModelShape& s) {
  if (s.n_layers < 1 || s.n_layers > kMaxLayers)
    return invalid_argument("n_layers=" + std::to_string(s.n_layers) + " outside [1, " + std::to_string(kMaxLayers) + "]");
  if (s.n_kv_heads < 1 || s.n_kv_heads > kMaxHeads)
    return invalid_argument("n_kv_heads=" + std::to_string(s.n_kv_heads) + " outside [1, " + std::to_string(kMaxHeads) + "]");
  if (s.head_dim < 2 || s.head_dim > kMaxHeadDim || s.head_dim % 2 != 0)
    return invalid_argument("head_dim=" + std::to_string(s.head_dim) + " must be even, in [2, " +
                            std::to_string(kMaxHeadDim) + "]");
  return check_rope(s.rope);
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

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF32: return "F32";
  }
  return "?";
}

int dtype_size_bytes(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF32: return 4;
  }
  return 0;
}

std::vector<double> RopeParams::inv_freq(int head_dim) const {
  const int half = head_dim > 0 ? head_dim / 2 : 0;
  std::vector<double> f(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) f[i] = std::pow(theta, -2.0 * i / head_dim);
  if (llama3_factor <= 0.0) return f;
  // Hugging Face _compute_llama3_parameters, in double: wavelengths shorter than orig/high keep their
  // frequency, longer than orig/low are divided by factor, and the band between is interpolated.
  const double low_freq_wavelen = llama3_original_max_position / llama3_low_freq_factor;
  const double high_freq_wavelen = llama3_original_max_position / llama3_high_freq_factor;
  for (double& inv : f) {
    const double wavelen = 2.0 * std::numbers::pi / inv;
    if (wavelen < high_freq_wavelen) continue;
    if (wavelen > low_freq_wavelen) {
      inv /= llama3_factor;
      continue;
    }
    const double smooth = (llama3_original_max_position / wavelen - llama3_low_freq_factor) /
                          (llama3_high_freq_factor - llama3_low_freq_factor);
    inv = (1.0 - smooth) * inv / llama3_factor + smooth * inv;
  }
  return f;
}

bool ModelShape::operator==(const ModelShape& o) const {
  const bool scaled = rope.llama3_factor != 0.0;
  const bool same_scaling =
      rope.llama3_factor == o.rope.llama3_factor &&
      (!scaled || (rope.llama3_low_freq_factor == o.rope.llama3_low_freq_factor &&
                   rope.llama3_high_freq_factor == o.rope.llama3_high_freq_factor &&
                   rope.llama3_original_max_position == o.rope.llama3_original_max_position));
  return n_layers == o.n_layers && n_kv_heads == o.n_kv_heads && head_dim == o.head_dim &&
         rope.theta == o.rope.theta && rope.style == o.rope.style && same_scaling;
}

std::string ModelShape::to_string() const {
  std::string s = std::to_string(n_layers) + " layers x " + std::to_string(n_kv_heads) + " kv heads x " +
                  std::to_string(head_dim) + ", rope " + rope_style_name(rope.style) + " theta " +
                  format_number(rope.theta);
  if (rope.llama3_factor != 0.0) {
    s += ", llama3 factor " + format_number(rope.llama3_factor) + " low " + format_number(rope.llama3_low_freq_factor) +
         " high " + format_number(rope.llama3_high_freq_factor) + " orig " +
         format_number(rope.llama3_original_max_position);
  }
  return s;
}

Status KVCache::validate() const {
  KVTC_RETURN_IF_ERROR(check_shape(shape));
  if (n_tokens < 0 || n_tokens > kMaxTokens) return invalid_argument("n_tokens=" + std::to_string(n_tokens) + " out of range");
  if (position_offset < 0 || position_offset > kMaxPosition)
    return invalid_argument("position_offset=" + std::to_string(position_offset) + " out of range");
  if (dtype_size_bytes(dtype) == 0) return invalid_argument("unknown dtype");
  if (n_heads < 0 || n_heads > kMaxHeads) return invalid_argument("n_heads=" + std::to_string(n_heads) + " out of range");
  if (n_query < 0 || n_query > kMaxTokens) return invalid_argument("n_query=" + std::to_string(n_query) + " out of range");
  if (n_query > 0 && n_heads == 0) return invalid_argument("n_query > 0 needs n_heads > 0");

  const std::vector<int64_t> kv_shape = {shape.n_kv_heads, n_tokens, shape.head_dim};
  const size_t kv_values = size_t(shape.n_kv_heads) * size_t(n_tokens) * size_t(shape.head_dim);
  if (k.size() != size_t(shape.n_layers) || v.size() != size_t(shape.n_layers))
    return invalid_argument("expected " + std::to_string(shape.n_layers) + " layers of k and v, got " +
                            std::to_string(k.size()) + " and " + std::to_string(v.size()));
  for (int l = 0; l < shape.n_layers; ++l) {
    for (const auto* t : {&k[l], &v[l]}) {
      if (t->size() != kv_values)
        return invalid_argument((t == &k[l] ? "k." : "v.") + std::to_string(l) + ": expected " +
                                std::to_string(kv_values) + " values " + shape_string(kv_shape) + ", got " +
                                std::to_string(t->size()));
    }
  }
  if (n_query == 0) {
    if (!q.empty()) return invalid_argument("q tensors present but n_query is 0");
    return Status::ok();
  }
  const std::vector<int64_t> q_shape = {n_heads, n_query, shape.head_dim};
  const size_t q_values = size_t(n_heads) * size_t(n_query) * size_t(shape.head_dim);
  if (q.size() != size_t(shape.n_layers))
    return invalid_argument("expected " + std::to_string(shape.n_layers) + " layers of q, got " + std::to_string(q.size()));
  for (int l = 0; l < shape.n_layers; ++l) {
    if (q[l].size() != q_values)
      return invalid_argument("q." + std::to_string(l) + ": expected " + std::to_string(q_values) + " values " +
                              shape_string(q_shape) + ", got " + std::to_string(q[l].size()));
  }
  return Status::ok();
}

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

namespace kvtc {

Status CacheView::validate() const {
  KVTC_RETURN_IF_ERROR(check_shape(shape));
  if (n_tokens < 0 || n_tokens > kMaxTokens) return invalid_argument("n_tokens=" + std::to_string(n_tokens) + " out of range");
  if (position_offset < 0 || position_offset > kMaxPosition)
    return invalid_argument("position_offset=" + std::to_string(position_offset) + " out of range");
  if (dtype_size_bytes(dtype) == 0 || dtype_size_bytes(element_dtype) == 0) return invalid_argument("unknown dtype");
  if (k.size() != size_t(shape.n_layers) || v.size() != size_t(shape.n_layers))
    return invalid_argument("expected " + std::to_string(shape.n_layers) + " layers of k and v, got " +
                            std::to_string(k.size()) + " and " + std::to_string(v.size()));
  for (int l = 0; l < shape.n_layers; ++l) {
    for (const TensorView* t : {&k[size_t(l)], &v[size_t(l)]}) {
      const std::string name = (t == &k[size_t(l)] ? "k." : "v.") + std::to_string(l);
      if (t->head_stride < 0 || t->token_stride < 0 || t->head_stride > kMaxTokens * kMaxHeadDim ||
          t->token_stride > kMaxTokens * kMaxHeadDim)
        return invalid_argument(name + ": strides must be non-negative and in range");
      if (n_tokens > 0 && t->data == nullptr) return invalid_argument(name + ": no data");
    }
  }
  return Status::ok();
}

CacheView CacheView::of(const KVCache& cache) {
  CacheView v;
  v.shape = cache.shape;
  v.element_dtype = DType::kF32;
  v.dtype = cache.dtype;
  v.n_tokens = cache.n_tokens;
  v.position_offset = cache.position_offset;
  v.model_name = cache.model_name;
  v.metadata = cache.metadata;
  const int64_t token_stride = cache.shape.head_dim, head_stride = cache.n_tokens * token_stride;
  for (size_t l = 0; l < cache.k.size(); ++l) v.k.push_back({cache.k[l].data(), head_stride, token_stride});
  for (size_t l = 0; l < cache.v.size(); ++l) v.v.push_back({cache.v[l].data(), head_stride, token_stride});
  return v;
}

Result<KVCache> copy_cache(const CacheView& view) {
  KVTC_RETURN_IF_ERROR(view.validate());
  KVCache c;
  c.shape = view.shape;
  c.dtype = view.dtype;
  c.n_tokens = view.n_tokens;
  c.position_offset = view.position_offset;
  c.model_name = view.model_name;
  c.metadata = view.metadata;
  const int d = view.shape.head_dim;
  const size_t n = size_t(view.shape.n_kv_heads) * size_t(view.n_tokens) * size_t(d);
  c.k.assign(size_t(view.shape.n_layers), std::vector<float>(n));
  c.v.assign(size_t(view.shape.n_layers), std::vector<float>(n));
  for (int l = 0; l < view.shape.n_layers; ++l)
    for (int h = 0; h < view.shape.n_kv_heads; ++h)
      for (int64_t t = 0; t < view.n_tokens; ++t) {
        read_row_f32(view.k[size_t(l)], view.element_dtype, h, t, d, c.k_row(l, h, t));
        read_row_f32(view.v[size_t(l)], view.element_dtype, h, t, d, c.v_row(l, h, t));
      }
  c.sync_metadata();
  return c;
}

}  // namespace kvtc
