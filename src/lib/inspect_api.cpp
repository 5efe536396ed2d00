// inspect_json: everything a container or calibration file holds, as JSON.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/calibrate.hpp"
#include "core/calibration_data.hpp"
#include "format/calibration_file.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

using nlohmann::json;

json shape_json(const ModelShape& s) {
  json j = {{"n_layers", s.n_layers}, {"n_kv_heads", s.n_kv_heads}, {"head_dim", s.head_dim},
            {"n_features", s.n_features()}, {"rope_theta", s.rope.theta},
            {"rope_style", s.rope.style == RopeStyle::kHalf ? "half" : "interleaved"}};
  if (s.rope.llama3_factor > 0)
    j["rope_llama3"] = {{"factor", s.rope.llama3_factor}, {"low_freq_factor", s.rope.llama3_low_freq_factor},
                        {"high_freq_factor", s.rope.llama3_high_freq_factor},
                        {"original_max_position", s.rope.llama3_original_max_position}};
  return j;
}

json groups_json(const std::vector<Group>& groups) {
  json out = json::array();
  for (const Group& g : groups)
    out.push_back({{"first", g.first_component}, {"n", g.n_components}, {"kind", group_kind_name(g.kind)},
                   {"width_bits", g.width_bits}});
  return out;
}

std::string hex64(uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Format 3 names each stream's quantiser; format 1 and 2 output keeps its keys so that readers of it
// see no change.
json allocation_json(const StreamAllocation& a, uint32_t format_version) {
  json j = {{"basis_rank", a.basis_rank}, {"kept_components", a.n_kept()},
            {"bits_per_token", a.nominal_bits_per_token()}, {"groups", groups_json(a.groups)}};
  if (format_version >= 3) j["quantiser"] = a.ecsq() ? "ecsq" : "groups";
  if (a.ecsq()) {
    j["ecsq_level"] = a.ecsq_level;
    if (a.token_classes()) j["ecsq_level_high"] = a.ecsq_level_high;  // format 4: the high class's level
    j["ecsq_n_kept"] = a.ecsq_n_kept;
    j["ecsq_fingerprint"] = hex64(a.ecsq_fingerprint);
  }
  return j;
}

Result<json> inspect_container(const uint8_t* bytes, size_t size) {
  KVTC_ASSIGN_OR_RETURN(ParsedContainer pc, parse_container(bytes, size));
  const ContainerHeader& h = pc.header;
  json j;
  j["type"] = "container";
  j["format_version"] = h.format_version;
  j["file_bytes"] = size;
  j["header_bytes"] = pc.payload_offset;
  j["shape"] = shape_json(h.shape);
  j["dtype"] = dtype_name(h.dtype);
  j["n_tokens"] = h.n_tokens;
  j["position_offset"] = h.position_offset;
  j["n_head_exact"] = h.n_head_exact;
  j["n_tail_exact"] = h.n_tail_exact;
  j["n_compressed_tokens"] = h.n_compressed_tokens();
  j["calibration_fingerprint"] = hex64(h.calibration_fingerprint);
  j["target_ratio"] = h.target_ratio;
  j["metadata"] = h.metadata;
  j["streams"] = {{"K", allocation_json(h.streams[0], h.format_version)},
                  {"V", allocation_json(h.streams[1], h.format_version)}};
  const int64_t p = h.shape.n_features();
  const uint64_t m = h.n_compressed_tokens();
  uint64_t coef_bytes = 0, exact_bytes = 0, bad = 0;
  json chunks = json::array();
  const char* kinds[] = {"exact", "side", "codes", "classes"};
  for (const ChunkEntry& c : h.chunks) {
    const bool ok = crc32_of(bytes + pc.payload_offset + c.offset, c.stored_bytes) == c.crc32;
    bad += !ok;
    (c.kind == ChunkKind::kExact ? exact_bytes : coef_bytes) += c.stored_bytes;
    chunks.push_back({{"kind", kinds[int(c.kind)]}, {"stream", c.stream == 0 ? "K" : "V"},
                      {"layout", c.layout == CodesLayout::kAligned ? "aligned" : "dense"},
                      {"token_begin", c.token_begin}, {"n_tokens", c.n_tokens}, {"item_begin", c.item_begin},
                      {"n_items", c.n_items}, {"offset", c.offset}, {"stored_bytes", c.stored_bytes},
                      {"raw_bytes", c.raw_bytes}, {"crc32", hex64(c.crc32).substr(8)}, {"checksum_ok", ok}});
    if (h.format_version >= 3) chunks.back()["coder"] = c.coder == ChunkCoder::kEcsqRans ? "rans" : "deflate";
  }
  const double raw_compressed = double(m) * double(p) * 4.0;
  const double nominal = double(h.streams[0].nominal_bits_per_token() + h.streams[1].nominal_bits_per_token()) * double(m) / 8.0;
  j["summary"] = {{"n_chunks", h.chunks.size()}, {"coefficient_bytes", coef_bytes}, {"exact_bytes", exact_bytes},
                  {"chunks_with_bad_checksum", bad},
                  {"ratio_compressed_tokens", coef_bytes ? raw_compressed / double(coef_bytes) : 0.0},
                  {"ratio_nominal", nominal > 0 ? raw_compressed / nominal : 0.0},
                  {"deflate_gain", coef_bytes ? nominal / double(coef_bytes) : 0.0},
                  {"ratio_file", double(h.n_tokens) * double(p) * 4.0 / double(size)}};
  j["chunks"] = chunks;
  return j;
}

Result<json> inspect_calibration(const uint8_t* bytes, size_t size) {
  KVTC_ASSIGN_OR_RETURN(CalibrationData d, parse_calibration(bytes, size));
  json j;
  j["type"] = "calibration";
  j["file_bytes"] = size;
  j["model"] = d.model_name;
  j["shape"] = shape_json(d.shape);
  j["fingerprint"] = hex64(d.fingerprint);
  j["n_calibration_tokens"] = d.n_calibration_tokens;
  j["n_sink_tokens"] = d.n_sink_tokens;
  j["n_window_tokens"] = d.n_window_tokens;
  j["ratios"] = d.ratios;
  for (int s = 0; s < 2; ++s) {
    const StreamCalibration& sc = s == 0 ? d.key : d.value;
    const double energy = mean_squared_norm(sc.pca);
    json allocs = json::array();
    for (size_t i = 0; i < sc.allocations.size(); ++i) {
      const Allocation& a = sc.allocations[i];
      allocs.push_back({{"target_ratio", a.target_ratio}, {"budget_bits_per_token", a.budget_bits_per_token},
                        {"bits_per_token", a.bits_per_token}, {"kept_components", a.n_kept_components()},
                        {"predicted_relative_error", energy > 0 ? a.predicted_error / energy : 0.0},
                        {"groups", groups_json(a.groups)}});
    }
    json var_head = json::array();
    for (size_t i = 0; i < std::min<size_t>(8, sc.pca.variance.size()); ++i) var_head.push_back(sc.pca.variance[i]);
    json& sj = j[s == 0 ? "K" : "V"];
    sj = {{"rank", sc.pca.rank}, {"total_variance", sc.pca.total_variance}, {"top_variances", var_head},
          {"allocations", allocs}};
    // Codec 3 needs these; their absence is what "recalibrate" errors refer to.
    if (!sc.ecsq.empty()) {
      size_t n_cells = 0;
      for (const auto& cells : sc.ecsq.cells) n_cells += cells.size();
      std::vector<uint8_t> model;
      serialize_ecsq_model(sc.ecsq, model);
      sj["ecsq"] = {{"levels", sc.ecsq.levels.size()},
                    {"n_components", sc.ecsq.n_components()},
                    {"fingerprint", hex64(sc.ecsq.fingerprint)},
                    {"prob_bits", sc.ecsq.prob_bits},
                    {"cells", n_cells},
                    {"bytes", model.size()},
                    {"finest_bits_per_token", sc.ecsq.levels.front().bits_per_token}};
    }
  }
  j["ecsq_folds"] = d.ecsq_folds;
  return j;
}

}  // namespace

Result<std::string> inspect_json(const uint8_t* bytes, size_t size_bytes) {
  if (size_bytes >= 8 && std::equal(kContainerMagic.begin(), kContainerMagic.end(), bytes)) {
    KVTC_ASSIGN_OR_RETURN(json j, inspect_container(bytes, size_bytes));
    return j.dump(2);
  }
  auto cal = inspect_calibration(bytes, size_bytes);
  if (cal.is_ok()) return cal->dump(2);
  if (cal.status().code() == StatusCode::kCorrupt && size_bytes >= 8 && bytes[0] != 0x89)
    return corrupt("neither a kvtc container nor a calibration file");
  return cal.status();
}

}  // namespace kvtc
