#include "core/ecsq_inspect.hpp"

#include <map>
#include <string>

#include "core/backend.hpp"
#include "core/ecsq_chunk.hpp"
#include "core/token_classes.hpp"
#include "entropy/rans_decode.hpp"
#include "format/container.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

Result<std::vector<EcsqChunkRans>> ecsq_container_rans_chunks(const CalibrationData& cal, const uint8_t* bytes,
                                                              size_t size_bytes) {
  KVTC_ASSIGN_OR_RETURN(const ParsedContainer pc, parse_container(bytes, size_bytes));
  const ContainerHeader& h = pc.header;
  KVTC_RETURN_IF_ERROR(check_container_matches(cal, h));
  const uint8_t* payload = bytes + pc.payload_offset;
  KVTC_ASSIGN_OR_RETURN(const std::vector<uint8_t> classes, read_token_classes(h, payload, true));
  std::map<const RansTable*, RansDecodeTable> decode_tables;
  std::vector<EcsqChunkRans> out;
  for (size_t i = 0; i < h.chunks.size(); ++i) {
    const ChunkEntry& c = h.chunks[i];
    if (c.kind != ChunkKind::kCodes || c.coder != ChunkCoder::kEcsqRans) continue;
    const std::string where = "chunk " + std::to_string(i);
    const StreamAllocation& a = h.streams[c.stream];
    const EcsqModel& model = c.stream == 0 ? cal.key.ecsq : cal.value.ecsq;
    if (a.ecsq_level >= model.levels.size() || (a.token_classes() && a.ecsq_level_high >= model.levels.size()))
      return corrupt(where + ": ECSQ level outside the calibration's model");
    uint64_t n_high = 0;
    if (a.token_classes()) {
      const uint64_t r0 = uint64_t(c.token_begin) - h.n_head_exact;
      if (r0 + c.n_tokens > classes.size()) return corrupt(where + ": tokens outside the class map");
      for (uint64_t t = r0; t < r0 + c.n_tokens; ++t) n_high += classes[t];
    }
    EcsqChunkRans e;
    e.chunk_index = i;
    e.runs = ecsq_chunk_runs(model, model.levels[a.ecsq_level], a.token_classes() ? &model.levels[a.ecsq_level_high] : nullptr,
                             c.n_tokens - n_high, n_high, c.item_begin, c.item_begin + c.n_items);
    const uint8_t* stored = payload + c.offset;
    // The rANS chunk is the front of the stored bytes (the raw bits follow): its size from its header,
    // then the header's own checks on exactly those bytes.
    const Result<uint64_t> front = ecsq_chunk_rans_bytes(stored, c.stored_bytes);
    if (!front.is_ok()) return front.status().with_context(where);
    const size_t rans_bytes = size_t(*front);
    const Result<RansChunkInfo> parsed = parse_rans_chunk_header(stored, rans_bytes);
    if (!parsed.is_ok()) return parsed.status().with_context(where);
    const RansChunkInfo info = *parsed;
    std::vector<RansDecodeRun> druns;
    for (const RansRun& r : e.runs) {
      auto it = decode_tables.find(r.table);
      if (it == decode_tables.end()) {
        KVTC_ASSIGN_OR_RETURN(RansDecodeTable dt, RansDecodeTable::build(*r.table));
        it = decode_tables.emplace(r.table, std::move(dt)).first;
      }
      druns.push_back({r.n_symbols, &it->second});
    }
    e.symbols.resize(info.n_symbols);
    KVTC_RETURN_IF_ERROR(rans_decode(stored, rans_bytes, druns.data(), druns.size(), e.symbols.data(), e.symbols.size())
                             .with_context(where));
    e.n_lanes = info.n_lanes;
    e.rans_bytes.assign(stored, stored + rans_bytes);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace kvtc
