#include "kvtc/cache.hpp"

#include <charconv>
#include <cmath>
#include <numbers>

#include "core/cache_rules.hpp"
#include "core/token_vectors.hpp"
#include "util/status_macros.hpp"

namespace kvtc {
namespace cache_rules {

const char* rope_style_name(RopeStyle s) { return s == RopeStyle::kInterleaved ? "interleaved" : "half"; }

std::string format_number(double v) {
  if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 1e15) return std::to_string(int64_t(v));
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
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

}  // namespace cache_rules

using namespace cache_rules;

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
