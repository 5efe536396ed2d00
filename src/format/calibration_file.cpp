// The calibration file (docs/CALIBRATION_FORMAT.md): magic, version, then checksummed sections.
// The parser treats its input as hostile: every count is checked against the bytes that remain
// before anything is allocated, and every value against its meaning.
#include "format/calibration_file.hpp"

#include <libdeflate.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <string>

namespace kvtc {
namespace {

static_assert(std::endian::native == std::endian::little, "the calibration format is little-endian");

using json = nlohmann::json;

constexpr uint8_t kMagic[8] = {0x89, 'K', 'V', 'T', 'C', 'A', 'L', 0x1a};
// Version 2 added the optional ECSQ sections; version-1 files still parse (without models).
constexpr uint32_t kVersion = 2;
constexpr size_t kSectionHeaderBytes = 16;  // tag[4], u64 payload length, u32 crc32
constexpr int64_t kMaxFeatures = int64_t(1) << 28;
constexpr int64_t kMaxShapeDim = int64_t(1) << 20;
constexpr size_t kMaxGroupSizes = 64;
constexpr size_t kMaxOptions = 256;
constexpr size_t kMaxRatios = 1024;

// Section tags, in file order: seven always, then KECQ and VECQ when the calibration has ECSQ models.
constexpr int kBaseSections = 7, kMaxSections = 9;
constexpr char kTags[kMaxSections][5] = {"META", "KPCA", "KTAB", "KALC", "VPCA", "VTAB", "VALC", "KECQ", "VECQ"};

// ----- writing -----------------------------------------------------------------------------------

class Writer {
 public:
  void u8(uint8_t v) { out.push_back(v); }
  void u32(uint32_t v) { raw(&v, 4); }
  void i32(int32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void i64(int64_t v) { raw(&v, 8); }
  void f64(double v) { raw(&v, 8); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  template <typename T>
  void array(const std::vector<T>& v) {
    raw(v.data(), v.size() * sizeof(T));
  }
  std::vector<uint8_t> out;
};

void put_section(std::vector<uint8_t>& file, const char* tag, const std::vector<uint8_t>& payload) {
  Writer h;
  h.raw(tag, 4);
  h.u64(payload.size());
  uint32_t crc = uint32_t(libdeflate_crc32(0, h.out.data(), 12));
  crc = uint32_t(libdeflate_crc32(crc, payload.data(), payload.size()));
  h.u32(crc);
  file.insert(file.end(), h.out.begin(), h.out.end());
  file.insert(file.end(), payload.begin(), payload.end());
}

const char* style_name(RopeStyle s) { return s == RopeStyle::kInterleaved ? "interleaved" : "half"; }

std::string hex64(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[size_t(i)] = digits[v & 15];
  return s;
}

std::vector<uint8_t> meta_payload(const CalibrationData& d) {
  const RopeParams& r = d.shape.rope;
  json j;
  j["model_name"] = d.model_name;
  j["n_layers"] = d.shape.n_layers;
  j["n_kv_heads"] = d.shape.n_kv_heads;
  j["head_dim"] = d.shape.head_dim;
  j["rope"] = {{"theta", r.theta},
               {"style", style_name(r.style)},
               {"llama3_factor", r.llama3_factor},
               {"llama3_low_freq_factor", r.llama3_low_freq_factor},
               {"llama3_high_freq_factor", r.llama3_high_freq_factor},
               {"llama3_original_max_position", r.llama3_original_max_position}};
  j["n_sink_tokens"] = d.n_sink_tokens;
  j["n_window_tokens"] = d.n_window_tokens;
  j["n_calibration_tokens"] = d.n_calibration_tokens;
  j["ratios"] = d.ratios;
  if (!d.key.ecsq.empty()) j["ecsq_folds"] = d.ecsq_folds;
  j["fingerprint"] = hex64(compute_fingerprint(d));
  const std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return std::vector<uint8_t>(s.begin(), s.end());
}

std::vector<uint8_t> pca_payload(const PcaBasis& b) {
  Writer w;
  w.u64(uint64_t(b.n_features));
  w.u64(uint64_t(b.rank));
  w.u64(uint64_t(b.n_samples));
  w.f64(b.total_variance);
  w.array(b.mean);
  w.array(b.variance);
  w.array(b.components);
  return std::move(w.out);
}

std::vector<uint8_t> table_payload(const DistortionTable& t) {
  Writer w;
  w.u64(uint64_t(t.rank));
  w.f64(t.residual_error);
  w.u32(uint32_t(t.group_sizes.size()));
  w.u32(uint32_t(t.options.size()));
  for (int s : t.group_sizes) w.i32(s);
  for (const auto& o : t.options) {
    w.u8(uint8_t(o.kind));
    w.u8(o.width_bits);
  }
  w.array(t.component_energy);
  for (const auto& size_rows : t.error)
    for (const auto& row : size_rows) w.array(row);
  return std::move(w.out);
}

std::vector<uint8_t> allocations_payload(const std::vector<Allocation>& allocs) {
  Writer w;
  w.u32(uint32_t(allocs.size()));
  for (const Allocation& a : allocs) {
    w.f64(a.target_ratio);
    w.i64(a.budget_bits_per_token);
    w.i64(a.bits_per_token);
    w.f64(a.predicted_error);
    w.u32(uint32_t(a.groups.size()));
    for (const Group& g : a.groups) {
      w.u32(g.first_component);
      w.u32(g.n_components);
      w.u8(uint8_t(g.kind));
      w.u8(g.width_bits);
    }
  }
  return std::move(w.out);
}

// ----- validation shared by both directions ------------------------------------------------------

bool finite_nonneg(double v) { return std::isfinite(v) && v >= 0.0; }

Status check_shape(const ModelShape& s) {
  if (s.n_layers <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.n_layers > kMaxShapeDim ||
      s.n_kv_heads > kMaxShapeDim || s.head_dim > kMaxShapeDim)
    return corrupt("model shape out of range: " + std::to_string(s.n_layers) + " x " + std::to_string(s.n_kv_heads) +
                   " x " + std::to_string(s.head_dim));
  if (s.n_features() > kMaxFeatures) return corrupt("model shape has too many features");
  if (s.head_dim % 2 != 0) return corrupt("head_dim must be even (RoPE pairs)");
  const RopeParams& r = s.rope;
  if (!(r.theta > 0.0) || !std::isfinite(r.theta)) return corrupt("rope theta must be positive");
  if (!finite_nonneg(r.llama3_factor) || !std::isfinite(r.llama3_low_freq_factor) ||
      !std::isfinite(r.llama3_high_freq_factor) || !std::isfinite(r.llama3_original_max_position))
    return corrupt("rope scaling parameters must be finite");
  return Status::ok();
}

Status check_pca(const PcaBasis& b, int64_t p) {
  if (b.n_features != p) return corrupt("basis has " + std::to_string(b.n_features) + " features, shape says " + std::to_string(p));
  if (b.rank < 1 || b.rank > p) return corrupt("basis rank " + std::to_string(b.rank) + " not in [1, " + std::to_string(p) + "]");
  if (b.n_samples < 0) return corrupt("negative sample count");
  if (!finite_nonneg(b.total_variance)) return corrupt("total variance must be finite and >= 0");
  if (int64_t(b.mean.size()) != p || int64_t(b.variance.size()) != b.rank ||
      int64_t(b.components.size()) != b.rank * p)
    return corrupt("basis arrays do not match its rank and feature count");
  for (float v : b.mean)
    if (!std::isfinite(v)) return corrupt("basis mean is not finite");
  for (double v : b.variance)
    if (!finite_nonneg(v)) return corrupt("basis variances must be finite and >= 0");
  for (float v : b.components)
    if (!std::isfinite(v)) return corrupt("basis components are not finite");
  return Status::ok();
}

bool option_valid(GroupKind kind, int width) {
  switch (kind) {
    case GroupKind::kDropped: return width == 0;
    case GroupKind::kInt:
    case GroupKind::kIntAffine: return width >= 1 && width <= kMaxWidthBits;
    case GroupKind::kFloat16: return width == 16;
  }
  return false;
}

Status check_table(const DistortionTable& t, int64_t rank) {
  if (t.rank != rank) return corrupt("distortion table rank " + std::to_string(t.rank) + " differs from the basis rank");
  if (!finite_nonneg(t.residual_error)) return corrupt("residual error must be finite and >= 0");
  if (t.group_sizes.empty() || t.group_sizes.size() > kMaxGroupSizes) return corrupt("bad number of group sizes");
  for (size_t i = 0; i < t.group_sizes.size(); ++i) {
    const int s = t.group_sizes[i];
    if (s <= 0 || s > kMaxShapeDim) return corrupt("group size out of range");
    if (i > 0 && (s <= t.group_sizes[i - 1] || s % t.group_sizes[i - 1] != 0))
      return corrupt("group sizes must increase and each divide the next");
  }
  if (t.options.empty() || t.options.size() > kMaxOptions) return corrupt("bad number of group options");
  for (const auto& o : t.options)
    if (!option_valid(o.kind, o.width_bits)) return corrupt("invalid group option");
  if (int64_t(t.component_energy.size()) != rank) return corrupt("component energy count differs from rank");
  for (double e : t.component_energy)
    if (!finite_nonneg(e)) return corrupt("component energies must be finite and >= 0");
  if (t.error.size() != t.group_sizes.size()) return corrupt("distortion table shape");
  for (size_t si = 0; si < t.group_sizes.size(); ++si) {
    if (int64_t(t.error[si].size()) != rank / t.group_sizes[si]) return corrupt("distortion table shape");
    for (const auto& row : t.error[si]) {
      if (row.size() != t.options.size()) return corrupt("distortion table shape");
      for (double e : row)
        if (!finite_nonneg(e)) return corrupt("distortion values must be finite and >= 0");
    }
  }
  return Status::ok();
}

Status check_allocation(const Allocation& a, int64_t rank) {
  if (!(a.target_ratio > 0.0) || !std::isfinite(a.target_ratio)) return corrupt("allocation ratio must be positive");
  if (a.budget_bits_per_token < 0) return corrupt("negative allocation budget");
  if (!finite_nonneg(a.predicted_error)) return corrupt("predicted error must be finite and >= 0");
  int64_t next = 0, bits = 0;
  for (const Group& g : a.groups) {
    if (int64_t(g.first_component) != next) return corrupt("allocation groups are not contiguous from component 0");
    if (g.n_components == 0) return corrupt("empty allocation group");
    if (!option_valid(g.kind, g.width_bits)) return corrupt("invalid allocation group kind or width");
    next += g.n_components;
    if (next > rank) return corrupt("allocation groups run past the basis rank");
    bits += g.bits_per_token();
  }
  if (bits != a.bits_per_token) return corrupt("allocation bits_per_token disagrees with its groups");
  if (bits > a.budget_bits_per_token) return corrupt("allocation exceeds its budget");
  return Status::ok();
}

Status check_data(const CalibrationData& d) {
  Status st = check_shape(d.shape);
  if (!st.is_ok()) return st;
  if (d.n_sink_tokens < 0 || d.n_window_tokens < 0 || d.n_calibration_tokens < 0)
    return corrupt("negative token counts");
  if (d.ratios.size() > kMaxRatios) return corrupt("too many ratios");
  for (double r : d.ratios)
    if (!(r > 0.0) || !std::isfinite(r)) return corrupt("ratios must be positive");
  const int64_t p = d.shape.n_features();
  for (const StreamCalibration* s : {&d.key, &d.value}) {
    const char* name = s == &d.key ? "keys" : "values";
    st = check_pca(s->pca, p);
    if (!st.is_ok()) return st.with_context(name);
    st = check_table(s->table, s->pca.rank);
    if (!st.is_ok()) return st.with_context(name);
    if (s->allocations.size() != d.ratios.size())
      return corrupt(std::string(name) + ": one allocation per ratio expected");
    for (size_t i = 0; i < s->allocations.size(); ++i) {
      if (s->allocations[i].target_ratio != d.ratios[i])
        return corrupt(std::string(name) + ": allocation " + std::to_string(i) + " is not for ratio " +
                       std::to_string(d.ratios[i]));
      st = check_allocation(s->allocations[i], s->pca.rank);
      if (!st.is_ok()) return st.with_context(std::string(name) + " allocation " + std::to_string(i));
    }
  }
  if (d.key.ecsq.empty() != d.value.ecsq.empty()) return corrupt("ECSQ models: both streams or neither");
  if (d.ecsq_folds < 0 || d.ecsq_folds > 2) return corrupt("ecsq_folds must be 0, 1 or 2");
  for (int s = 0; s < 2; ++s) {
    const StreamCalibration& sc = s == 0 ? d.key : d.value;
    if (sc.ecsq.empty()) continue;
    const std::string name = std::string(s == 0 ? "keys" : "values") + " ECSQ model";
    const size_t k = sc.ecsq.cells.size();
    if (int64_t(k) != sc.pca.rank) return corrupt(name + ": component count differs from the basis rank");
    if (sc.ecsq.levels.size() > size_t(kEcsqMaxLevels)) return corrupt(name + ": too many levels");
    for (const auto& cells : sc.ecsq.cells)
      if (cells.size() > size_t(kEcsqGridSteps)) return corrupt(name + ": too many cells");
    for (const EcsqLevel& lv : sc.ecsq.levels) {
      if (lv.cell.size() != k) return corrupt(name + ": a level does not cover every component");
      for (size_t j = 0; j < k; ++j)
        if (lv.cell[j] > sc.ecsq.cells[j].size()) return corrupt(name + ": a level names a missing cell");
    }
  }
  return Status::ok();
}

// ----- reading -----------------------------------------------------------------------------------

// Bounds-checked little-endian reads; after the first short read everything fails.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  bool take(void* dst, size_t n) {
    if (!ok_ || remaining() < n) {
      ok_ = false;
      return false;
    }
    std::memcpy(dst, p_, n);
    p_ += n;
    return true;
  }
  template <typename T>
  T get() {
    T v{};
    take(&v, sizeof(T));
    return v;
  }
  // Reads n elements, refusing (without allocating) counts the remaining bytes cannot hold.
  template <typename T>
  bool array(uint64_t n, std::vector<T>& out) {
    if (!ok_ || n > remaining() / sizeof(T)) {
      ok_ = false;
      return false;
    }
    out.resize(size_t(n));
    return take(out.data(), size_t(n) * sizeof(T));
  }
  size_t remaining() const { return size_t(end_ - p_); }
  bool ok() const { return ok_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  bool ok_ = true;
};

Status truncated(const char* what) { return corrupt(std::string(what) + ": section too short for its contents"); }

Status parse_meta(const uint8_t* p, size_t n, uint32_t version, CalibrationData& d, uint64_t& stored_fingerprint) {
  const json j = json::parse(p, p + n, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return corrupt("META is not a JSON object");
  auto integer = [&](const json& o, const char* key, int64_t lo, int64_t hi, int64_t& out) -> Status {
    auto it = o.find(key);
    if (it == o.end() || !it->is_number_integer()) return corrupt(std::string("META: missing integer ") + key);
    const int64_t v = it->is_number_unsigned() ? (it->get<uint64_t>() > uint64_t(hi) ? hi + 1 : int64_t(it->get<uint64_t>()))
                                               : it->get<int64_t>();
    if (v < lo || v > hi) return corrupt(std::string("META: ") + key + " out of range");
    out = v;
    return Status::ok();
  };
  auto number = [&](const json& o, const char* key, double& out) -> Status {
    auto it = o.find(key);
    if (it == o.end() || !it->is_number()) return corrupt(std::string("META: missing number ") + key);
    out = it->get<double>();
    return Status::ok();
  };
  int64_t v = 0;
  Status st;
  if (!(st = integer(j, "n_layers", 1, kMaxShapeDim, v)).is_ok()) return st;
  d.shape.n_layers = int32_t(v);
  if (!(st = integer(j, "n_kv_heads", 1, kMaxShapeDim, v)).is_ok()) return st;
  d.shape.n_kv_heads = int32_t(v);
  if (!(st = integer(j, "head_dim", 1, kMaxShapeDim, v)).is_ok()) return st;
  d.shape.head_dim = int32_t(v);
  if (!(st = integer(j, "n_sink_tokens", 0, std::numeric_limits<int32_t>::max(), v)).is_ok()) return st;
  d.n_sink_tokens = int32_t(v);
  if (!(st = integer(j, "n_window_tokens", 0, std::numeric_limits<int32_t>::max(), v)).is_ok()) return st;
  d.n_window_tokens = int32_t(v);
  if (!(st = integer(j, "n_calibration_tokens", 0, std::numeric_limits<int64_t>::max(), v)).is_ok()) return st;
  d.n_calibration_tokens = v;

  auto rope = j.find("rope");
  if (rope == j.end() || !rope->is_object()) return corrupt("META: missing rope");
  RopeParams& r = d.shape.rope;
  if (!(st = number(*rope, "theta", r.theta)).is_ok()) return st;
  if (!(st = number(*rope, "llama3_factor", r.llama3_factor)).is_ok()) return st;
  if (!(st = number(*rope, "llama3_low_freq_factor", r.llama3_low_freq_factor)).is_ok()) return st;
  if (!(st = number(*rope, "llama3_high_freq_factor", r.llama3_high_freq_factor)).is_ok()) return st;
  if (!(st = number(*rope, "llama3_original_max_position", r.llama3_original_max_position)).is_ok()) return st;
  auto style = rope->find("style");
  if (style == rope->end() || !style->is_string()) return corrupt("META: missing rope style");
  if (*style == "half") {
    r.style = RopeStyle::kHalf;
  } else if (*style == "interleaved") {
    r.style = RopeStyle::kInterleaved;
  } else {
    return corrupt("META: unknown rope style");
  }

  auto name = j.find("model_name");
  if (name == j.end() || !name->is_string()) return corrupt("META: missing model_name");
  d.model_name = name->get<std::string>();
  auto ratios = j.find("ratios");
  if (ratios == j.end() || !ratios->is_array() || ratios->size() > kMaxRatios) return corrupt("META: bad ratios");
  d.ratios.clear();
  for (const auto& x : *ratios) {
    if (!x.is_number()) return corrupt("META: ratios must be numbers");
    d.ratios.push_back(x.get<double>());
  }
  // Version 1 readers ignored unknown keys: a version-1 file is read exactly as before.
  auto folds = j.find("ecsq_folds");
  if (version >= 2 && folds != j.end()) {
    if (!(st = integer(j, "ecsq_folds", 0, 2, v)).is_ok()) return st;
    d.ecsq_folds = int32_t(v);
  }
  auto fp = j.find("fingerprint");
  if (fp == j.end() || !fp->is_string() || fp->get<std::string>().size() != 16) return corrupt("META: bad fingerprint");
  stored_fingerprint = 0;
  for (char c : fp->get<std::string>()) {
    int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return corrupt("META: bad fingerprint");
    stored_fingerprint = (stored_fingerprint << 4) | uint64_t(digit);
  }
  return check_shape(d.shape);
}

Status parse_pca(const uint8_t* p, size_t n, int64_t n_features, PcaBasis& b) {
  Reader r(p, n);
  const uint64_t pf = r.get<uint64_t>(), rank = r.get<uint64_t>(), ns = r.get<uint64_t>();
  b.total_variance = r.get<double>();
  if (!r.ok()) return truncated("PCA");
  if (pf != uint64_t(n_features)) return corrupt("PCA: feature count differs from the model shape");
  if (rank < 1 || rank > pf) return corrupt("PCA: rank out of range");
  if (ns > uint64_t(std::numeric_limits<int64_t>::max())) return corrupt("PCA: sample count out of range");
  // Exact size before any allocation: 4p + 8r + 4rp bytes remain (rank <= p <= 2^28, no overflow).
  if (r.remaining() != 4 * pf + 8 * rank + 4 * rank * pf) return corrupt("PCA: section size does not match rank and features");
  b.n_features = int64_t(pf);
  b.rank = int64_t(rank);
  b.n_samples = int64_t(ns);
  r.array(pf, b.mean);
  r.array(rank, b.variance);
  r.array(rank * pf, b.components);
  if (!r.ok()) return truncated("PCA");
  return check_pca(b, n_features);
}

Status parse_table(const uint8_t* p, size_t n, DistortionTable& t) {
  Reader r(p, n);
  const uint64_t rank = r.get<uint64_t>();
  t.residual_error = r.get<double>();
  const uint32_t n_sizes = r.get<uint32_t>(), n_opts = r.get<uint32_t>();
  if (!r.ok()) return truncated("distortion table");
  if (rank > uint64_t(kMaxFeatures)) return corrupt("distortion table: rank out of range");
  if (n_sizes == 0 || n_sizes > kMaxGroupSizes || n_opts == 0 || n_opts > kMaxOptions)
    return corrupt("distortion table: bad size or option count");
  t.rank = int64_t(rank);
  t.group_sizes.resize(n_sizes);
  for (auto& s : t.group_sizes) s = r.get<int32_t>();
  t.options.resize(n_opts);
  for (auto& o : t.options) {
    o.kind = GroupKind(r.get<uint8_t>());
    o.width_bits = r.get<uint8_t>();
  }
  if (!r.ok()) return truncated("distortion table");
  uint64_t n_entries = 0;
  for (int s : t.group_sizes) {
    if (s <= 0) return corrupt("distortion table: group size out of range");
    n_entries += rank / uint64_t(s);
  }
  n_entries *= n_opts;  // <= 64 * 2^28 * 256 = 2^42
  if (r.remaining() != 8 * (rank + n_entries)) return corrupt("distortion table: section size does not match its shape");
  r.array(rank, t.component_energy);
  t.error.assign(n_sizes, {});
  for (uint32_t si = 0; si < n_sizes; ++si) {
    t.error[si].resize(size_t(rank / uint64_t(t.group_sizes[si])));
    for (auto& row : t.error[si]) r.array(n_opts, row);
  }
  if (!r.ok()) return truncated("distortion table");
  return Status::ok();
}

Status parse_allocations(const uint8_t* p, size_t n, std::vector<Allocation>& out) {
  Reader r(p, n);
  const uint32_t count = r.get<uint32_t>();
  if (!r.ok()) return truncated("allocations");
  if (count > kMaxRatios) return corrupt("allocations: too many");
  out.clear();
  for (uint32_t i = 0; i < count; ++i) {
    Allocation a;
    a.target_ratio = r.get<double>();
    a.budget_bits_per_token = r.get<int64_t>();
    a.bits_per_token = r.get<int64_t>();
    a.predicted_error = r.get<double>();
    const uint32_t n_groups = r.get<uint32_t>();
    if (!r.ok()) return truncated("allocations");
    if (n_groups > r.remaining() / 10) return truncated("allocations");
    a.groups.resize(n_groups);
    for (Group& g : a.groups) {
      g.first_component = r.get<uint32_t>();
      g.n_components = r.get<uint32_t>();
      g.kind = GroupKind(r.get<uint8_t>());
      g.width_bits = r.get<uint8_t>();
    }
    if (!r.ok()) return truncated("allocations");
    out.push_back(std::move(a));
  }
  if (r.remaining() != 0) return corrupt("allocations: trailing bytes");
  return Status::ok();
}

Result<CalibrationData> parse_impl(const uint8_t* bytes, size_t size) {
  if (bytes == nullptr || size < 16) return corrupt("calibration file too short (" + std::to_string(size) + " bytes)");
  if (std::memcmp(bytes, kMagic, 8) != 0) return corrupt("not a kvtc calibration file (bad magic)");
  uint32_t version = 0, n_sections = 0;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&n_sections, bytes + 12, 4);
  if (version == 0) return corrupt("calibration format version 0 is invalid");
  if (version > kVersion)
    return unsupported("calibration format version " + std::to_string(version) + " (this build reads version " +
                       std::to_string(kVersion) + ")");
  const bool ecsq_allowed = version >= 2;
  if (n_sections != uint32_t(kBaseSections) && !(ecsq_allowed && n_sections == uint32_t(kMaxSections)))
    return corrupt("calibration file of version " + std::to_string(version) + " must hold 7" +
                   (ecsq_allowed ? " or 9" : "") + " sections, header says " + std::to_string(n_sections));

  // Locate and verify every section first: a damaged file is reported as such before any parsing.
  const int n_present = int(n_sections);
  const uint8_t* payload[kMaxSections];
  size_t length[kMaxSections];
  size_t pos = 16;
  for (int i = 0; i < n_present; ++i) {
    if (size - pos < kSectionHeaderBytes) return corrupt(std::string("truncated before section ") + kTags[i]);
    const uint8_t* h = bytes + pos;
    if (std::memcmp(h, kTags[i], 4) != 0) return corrupt(std::string("expected section ") + kTags[i]);
    uint64_t len = 0;
    uint32_t crc = 0;
    std::memcpy(&len, h + 4, 8);
    std::memcpy(&crc, h + 12, 4);
    pos += kSectionHeaderBytes;
    if (len > size - pos) return corrupt(std::string("section ") + kTags[i] + " runs past the end of the file");
    uint32_t actual = uint32_t(libdeflate_crc32(0, h, 12));
    actual = uint32_t(libdeflate_crc32(actual, bytes + pos, size_t(len)));
    if (actual != crc) return checksum_mismatch(std::string("section ") + kTags[i] + ": CRC32 mismatch");
    payload[i] = bytes + pos;
    length[i] = size_t(len);
    pos += size_t(len);
  }
  if (pos != size) return corrupt("trailing bytes after the last section");

  CalibrationData d;
  uint64_t stored_fp = 0;
  Status st = parse_meta(payload[0], length[0], version, d, stored_fp);
  if (!st.is_ok()) return st;
  const int64_t p = d.shape.n_features();
  StreamCalibration* streams[2] = {&d.key, &d.value};
  for (int s = 0; s < 2; ++s) {
    const char* name = s == 0 ? "keys" : "values";
    st = parse_pca(payload[1 + 3 * s], length[1 + 3 * s], p, streams[s]->pca);
    if (!st.is_ok()) return st.with_context(name);
    st = parse_table(payload[2 + 3 * s], length[2 + 3 * s], streams[s]->table);
    if (!st.is_ok()) return st.with_context(name);
    st = parse_allocations(payload[3 + 3 * s], length[3 + 3 * s], streams[s]->allocations);
    if (!st.is_ok()) return st.with_context(name);
    if (n_present == kMaxSections) {
      // parse_ecsq_model checks every count against the bytes left and the component count against the
      // basis rank (validated above) before it allocates.
      auto m = parse_ecsq_model(payload[kBaseSections + s], length[kBaseSections + s], uint32_t(streams[s]->pca.rank));
      if (!m.is_ok()) return m.status().with_context(name);
      streams[s]->ecsq = std::move(m).value();
    }
  }
  if (n_present == kBaseSections) d.ecsq_folds = 0;  // no models: nothing to describe
  st = check_data(d);
  if (!st.is_ok()) return st;
  d.fingerprint = compute_fingerprint(d);
  if (d.fingerprint != stored_fp) return corrupt("stored fingerprint does not match the basis");
  return d;
}

// CRC-32 of little-endian scalars and arrays, continued across calls.
struct Crc {
  uint32_t v;
  void bytes(const void* p, size_t n) { v = uint32_t(libdeflate_crc32(v, p, n)); }
  template <typename T>
  void scalar(T x) {
    bytes(&x, sizeof(T));
  }
};

void hash_shape(Crc& c, const ModelShape& s) {
  c.bytes("kvtc-calibration-fingerprint-1", 30);
  c.scalar(int32_t(s.n_layers));
  c.scalar(int32_t(s.n_kv_heads));
  c.scalar(int32_t(s.head_dim));
  c.scalar(uint8_t(s.rope.style));
  c.scalar(s.rope.theta);
  c.scalar(s.rope.llama3_factor);
  c.scalar(s.rope.llama3_low_freq_factor);
  c.scalar(s.rope.llama3_high_freq_factor);
  c.scalar(s.rope.llama3_original_max_position);
}

void hash_basis(Crc& c, const PcaBasis& b) {
  c.scalar(int64_t(b.rank));
  c.bytes(b.mean.data(), b.mean.size() * sizeof(float));
  c.bytes(b.components.data(), b.components.size() * sizeof(float));
}

}  // namespace

uint64_t compute_fingerprint(const CalibrationData& data) {
  // Two CRC-32s over the identity (shape, then both bases) in opposite stream orders and with
  // different starting values; together 64 bits, enough to tell calibrations apart (not a MAC).
  Crc lo{0}, hi{0x5bd1e995u};
  hash_shape(lo, data.shape);
  hash_basis(lo, data.key.pca);
  hash_basis(lo, data.value.pca);
  hash_shape(hi, data.shape);
  hash_basis(hi, data.value.pca);
  hash_basis(hi, data.key.pca);
  return (uint64_t(hi.v) << 32) | lo.v;
}

Result<std::vector<uint8_t>> serialize_calibration(const CalibrationData& data) {
  Status st = check_data(data);
  if (!st.is_ok()) return invalid_argument("calibration is not consistent: " + st.message());
  try {
    std::vector<uint8_t> file(kMagic, kMagic + 8);
    const bool with_ecsq = !data.key.ecsq.empty();
    Writer h;
    h.u32(kVersion);
    h.u32(uint32_t(with_ecsq ? kMaxSections : kBaseSections));
    file.insert(file.end(), h.out.begin(), h.out.end());
    put_section(file, kTags[0], meta_payload(data));
    const StreamCalibration* streams[2] = {&data.key, &data.value};
    for (int s = 0; s < 2; ++s) {
      put_section(file, kTags[1 + 3 * s], pca_payload(streams[s]->pca));
      put_section(file, kTags[2 + 3 * s], table_payload(streams[s]->table));
      put_section(file, kTags[3 + 3 * s], allocations_payload(streams[s]->allocations));
    }
    for (int s = 0; with_ecsq && s < 2; ++s) {
      std::vector<uint8_t> payload;
      serialize_ecsq_model(streams[s]->ecsq, payload);
      put_section(file, kTags[kBaseSections + s], payload);
    }
    return file;
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "serializing the calibration: out of memory");
  }
}

Result<CalibrationData> parse_calibration(const uint8_t* bytes, size_t size_bytes) {
  try {
    return parse_impl(bytes, size_bytes);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "parsing the calibration: out of memory");
  } catch (const std::exception& e) {
    return corrupt(std::string("calibration file: ") + e.what());
  }
}

}  // namespace kvtc
