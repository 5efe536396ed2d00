#include "format/container.hpp"

#include <libdeflate.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "entropy/rans_chunk.hpp"
#include "util/bytes.hpp"
#include "util/crc32.hpp"

static_assert(sizeof(double) == 8 && sizeof(float) == 4, "IEEE types required");
static_assert(std::endian::native == std::endian::little, "kvtc formats assume a little-endian host");

namespace kvtc {

uint32_t crc32_of(const uint8_t* data, size_t size_bytes) { return crc32_update(0, data, size_bytes); }

KVCache cache_skeleton(const ContainerHeader& h) {
  KVCache c;
  c.shape = h.shape;
  c.dtype = h.dtype;
  c.n_tokens = int64_t(h.n_tokens);
  c.position_offset = h.position_offset;
  c.metadata = h.metadata;
  auto it = h.metadata.find("model");
  if (it != h.metadata.end()) c.model_name = it->second;
  it = h.metadata.find("num_heads");
  if (it != h.metadata.end()) c.n_heads = int32_t(std::strtol(it->second.c_str(), nullptr, 10));
  c.k.assign(size_t(h.shape.n_layers), {});
  c.v.assign(size_t(h.shape.n_layers), {});
  return c;
}

int64_t StreamAllocation::nominal_bits_per_token() const {
  int64_t bits = 0;
  for (const Group& g : groups) bits += g.bits_per_token();
  return bits;
}

std::vector<uint8_t> serialize_container_header(const ContainerHeader& h) {
  std::vector<uint8_t> out;
  ByteWriter w(out);
  w.bytes(kContainerMagic.data(), kContainerMagic.size());
  const bool v3 = h.streams[0].ecsq() || h.streams[1].ecsq();
  w.u32(h.token_classes() ? kContainerVersion : v3 ? kEcsqContainerVersion : kGroupsContainerVersion);
  w.u32(0);  // header_bytes, patched below
  w.u32(uint32_t(h.shape.n_layers));
  w.u32(uint32_t(h.shape.n_kv_heads));
  w.u32(uint32_t(h.shape.head_dim));
  w.u8(uint8_t(h.shape.rope.style));
  w.u8(uint8_t(h.dtype));
  w.u16(0);
  w.f64(h.shape.rope.theta);
  w.f64(h.shape.rope.llama3_factor);
  w.f64(h.shape.rope.llama3_low_freq_factor);
  w.f64(h.shape.rope.llama3_high_freq_factor);
  w.f64(h.shape.rope.llama3_original_max_position);
  w.i64(h.position_offset);
  w.u64(h.n_tokens);
  w.u32(h.n_head_exact);
  w.u32(h.n_tail_exact);
  w.u64(h.calibration_fingerprint);
  w.f64(h.target_ratio);
  const std::string meta = nlohmann::json(h.metadata).dump();
  w.u32(uint32_t(meta.size()));
  w.bytes(meta.data(), meta.size());
  for (const StreamAllocation& s : h.streams) {
    w.u32(s.basis_rank);
    if (v3) {
      w.u8(uint8_t(s.quantiser));
      w.u8(0);
      w.u16(0);
      if (s.ecsq()) {
        w.u32(s.ecsq_level);
        if (s.token_classes()) w.u32(s.ecsq_level_high);
        w.u32(s.ecsq_n_kept);
        w.u64(s.ecsq_fingerprint);
        continue;
      }
    }
    w.u32(uint32_t(s.groups.size()));
    for (const Group& g : s.groups) {
      w.u32(g.first_component);
      w.u32(g.n_components);
      w.u8(uint8_t(g.kind));
      w.u8(g.width_bits);
      w.u16(0);
    }
  }
  w.u32(uint32_t(h.chunks.size()));
  for (const ChunkEntry& c : h.chunks) {
    w.u8(uint8_t(c.kind));
    w.u8(c.stream);
    w.u8(uint8_t(c.layout));
    w.u8(v3 ? uint8_t(c.coder) : 0);
    w.u32(c.token_begin);
    w.u32(c.n_tokens);
    w.u32(c.item_begin);
    w.u32(c.n_items);
    w.u64(c.offset);
    w.u32(c.stored_bytes);
    w.u32(c.raw_bytes);
    w.u32(c.crc32);
  }
  const uint32_t header_bytes = uint32_t(out.size() - kPreambleBytes + 4);
  std::memcpy(out.data() + kPreambleHeaderBytesOffset, &header_bytes, 4);
  const uint32_t crc = crc32_of(out.data(), out.size());
  w.u32(crc);
  return out;
}

namespace {

Status check_groups(const StreamAllocation& s, int stream) {
  const std::string where = std::string("stream ") + (stream == 0 ? "K" : "V");
  uint32_t next = 0;
  for (size_t i = 0; i < s.groups.size(); ++i) {
    const Group& g = s.groups[i];
    const std::string gw = where + " group " + std::to_string(i);
    if (g.first_component != next) return corrupt(gw + ": not contiguous");
    if (g.n_components == 0) return corrupt(gw + ": empty");
    if (uint64_t(g.first_component) + g.n_components > s.basis_rank) return corrupt(gw + ": beyond basis rank");
    switch (g.kind) {
      case GroupKind::kDropped:
        if (g.width_bits != 0) return corrupt(gw + ": dropped group with a width");
        break;
      case GroupKind::kInt:
      case GroupKind::kIntAffine:
        if (g.width_bits < 1 || g.width_bits > kMaxWidthBits) return corrupt(gw + ": width out of range");
        break;
      case GroupKind::kFloat16:
        if (g.width_bits != 16) return corrupt(gw + ": fp16 group must have width 16");
        break;
      default:
        return corrupt(gw + ": unknown kind " + std::to_string(int(g.kind)));
    }
    next = g.first_component + g.n_components;
  }
  return Status::ok();
}

// Finds the group holding component j (groups are contiguous and sorted).
const Group* group_of(const StreamAllocation& s, uint32_t j) {
  auto it = std::upper_bound(s.groups.begin(), s.groups.end(), j,
                             [](uint32_t v, const Group& g) { return v < g.first_component; });
  if (it == s.groups.begin()) return nullptr;
  --it;
  return j < it->first_component + it->n_components ? &*it : nullptr;
}

// Checks that [begin, end) is partitioned by the given ranges.
bool partitions(std::vector<std::pair<uint64_t, uint64_t>> ranges, uint64_t begin, uint64_t end) {
  std::sort(ranges.begin(), ranges.end());
  uint64_t next = begin;
  for (const auto& [b, n] : ranges) {
    if (b != next || n == 0) return false;
    next = b + n;
  }
  return next == end;
}

Status check_coverage(const ContainerHeader& h) {
  const uint64_t T = h.n_tokens;
  const uint64_t c0 = h.n_head_exact, c1 = T - h.n_tail_exact;
  for (int s = 0; s < 2; ++s) {
    const StreamAllocation& a = h.streams[s];
    const std::string where = std::string("stream ") + (s == 0 ? "K" : "V");
    // exact chunks: per layer, the head and the tail range
    std::vector<std::vector<std::pair<uint64_t, uint64_t>>> exact(h.shape.n_layers);
    std::vector<std::pair<uint64_t, uint64_t>> side;
    std::map<std::pair<uint64_t, uint64_t>, std::vector<std::pair<uint64_t, uint64_t>>> codes;
    for (const ChunkEntry& c : h.chunks) {
      if (c.stream != s || c.kind == ChunkKind::kClasses) continue;
      if (c.kind == ChunkKind::kExact) {
        if (c.item_begin >= uint32_t(h.shape.n_layers)) return corrupt(where + ": exact chunk layer out of range");
        exact[c.item_begin].push_back({c.token_begin, c.n_tokens});
      } else if (c.kind == ChunkKind::kSide) {
        side.push_back({c.token_begin, c.n_tokens});
      } else {
        codes[{c.token_begin, c.n_tokens}].push_back({c.item_begin, c.n_items});
      }
    }
    for (int l = 0; l < h.shape.n_layers; ++l) {
      // Version 1: one chunk per segment. Version 2: chunks partitioning each segment (none spans both).
      auto& e = exact[l];
      std::sort(e.begin(), e.end());
      std::vector<std::pair<uint64_t, uint64_t>> head, tail;
      for (const auto& r : e) (r.first < c0 ? head : tail).push_back(r);
      const bool v1 = h.format_version == 1;
      const bool ok = partitions(head, 0, c0) && (h.n_tail_exact == 0 ? tail.empty() : partitions(tail, c1, T)) &&
                      (!v1 || (head.size() <= 1 && tail.size() <= 1));
      if (!ok) return corrupt(where + " layer " + std::to_string(l) + ": exact chunks do not cover the exact tokens");
    }
    bool has_side_groups = false;
    for (const Group& g : a.groups) has_side_groups |= side_bits_per_token(g.kind) > 0;
    const bool any_compressed = c1 > c0;
    if (has_side_groups && any_compressed) {
      if (!partitions(side, c0, c1)) return corrupt(where + ": side chunks do not partition the compressed tokens");
    } else if (!side.empty()) {
      return corrupt(where + ": unexpected side chunks");
    }
    if (a.n_kept() > 0 && any_compressed) {
      std::vector<std::pair<uint64_t, uint64_t>> blocks;
      for (auto& [blk, comps] : codes) {
        blocks.push_back(blk);
        if (!partitions(comps, 0, a.n_kept()))
          return corrupt(where + ": codes chunks of tokens " + std::to_string(blk.first) + ".. do not cover the kept components");
      }
      if (!partitions(blocks, c0, c1)) return corrupt(where + ": codes token blocks do not partition the compressed tokens");
      if (has_side_groups) {
        std::sort(side.begin(), side.end());
        if (side != blocks) return corrupt(where + ": side and codes token blocks differ");
      }
    } else if (!codes.empty()) {
      return corrupt(where + ": unexpected codes chunks");
    }
  }
  // Section 10: one classes chunk over all compressed tokens where a stream has token classes.
  size_t n_classes = 0;
  for (const ChunkEntry& c : h.chunks) {
    if (c.kind != ChunkKind::kClasses) continue;
    ++n_classes;
    if (c.stream != 0 || c.item_begin != 0 || c.n_items != 0 || c.token_begin != c0 || uint64_t(c.n_tokens) != c1 - c0)
      return corrupt("the classes chunk must cover the compressed tokens, in stream 0, with no items");
  }
  const size_t want = h.token_classes() && c1 > c0 ? 1 : 0;
  if (n_classes != want)
    return corrupt(std::to_string(n_classes) + " classes chunks where the streams' quantisers need " + std::to_string(want));
  return Status::ok();
}

}  // namespace

Result<uint64_t> expected_chunk_raw_bytes(const ContainerHeader& h, const ChunkEntry& c) {
  const StreamAllocation& a = h.streams[c.stream];
  const uint64_t n = c.n_tokens;
  switch (c.kind) {
    case ChunkKind::kExact:
      return uint64_t(h.shape.n_kv_heads) * n * uint64_t(h.shape.head_dim) * uint64_t(dtype_size_bytes(h.dtype));
    case ChunkKind::kSide: {
      if (a.ecsq()) return corrupt("side chunk in an ECSQ stream");
      uint64_t values = 0;
      for (const Group& g : a.groups) values += uint64_t(side_bits_per_token(g.kind) / 16);
      return 2 * n * values;
    }
    case ChunkKind::kClasses:
      return (n + 7) / 8;
    case ChunkKind::kCodes: {
      if (uint64_t(c.item_begin) + c.n_items > a.n_kept()) return corrupt("codes chunk beyond kept components");
      if (a.token_classes()) {  // each token has a symbol in a component where its class's level has a cell
        if (c.raw_bytes > kRansMaxChunkSymbols || uint64_t(c.raw_bytes) > n * c.n_items)
          return corrupt("ECSQ codes chunk of " + std::to_string(c.raw_bytes) + " symbols");
        return uint64_t(c.raw_bytes);
      }
      if (a.ecsq()) {
        if (c.raw_bytes < 1 || c.raw_bytes > kRansMaxChunkSymbols || uint64_t(c.raw_bytes) > n * c.n_items ||
            c.raw_bytes % n != 0)
          return corrupt("ECSQ codes chunk of " + std::to_string(c.raw_bytes) + " symbols");
        return uint64_t(c.raw_bytes);
      }
      // Walk the groups the range overlaps (groups are contiguous from component 0): linear in groups,
      // not in components, so that parsing a container with thousands of chunks stays cheap.
      uint64_t bytes = 0, bits = 0;
      const uint32_t end = c.item_begin + c.n_items;
      const Group* first = c.n_items > 0 ? group_of(a, c.item_begin) : nullptr;
      if (c.n_items > 0 && first == nullptr) return corrupt("codes chunk component without a group");
      for (size_t gi = c.n_items > 0 ? size_t(first - a.groups.data()) : a.groups.size(); gi < a.groups.size(); ++gi) {
        const Group& g = a.groups[gi];
        if (g.first_component >= end) break;
        const uint64_t k = std::min(end, g.first_component + g.n_components) - std::max(c.item_begin, g.first_component);
        if (g.kind == GroupKind::kFloat16) {
          bytes += 2 * n * k;
          bits += 16 * n * k;
        } else if (g.kind != GroupKind::kDropped) {
          bytes += k * ((n * uint64_t(container_width_bits(g.width_bits)) + 7) / 8);
          bits += k * n * g.width_bits;
        }
      }
      return c.layout == CodesLayout::kAligned ? bytes : (bits + 7) / 8;
    }
  }
  return corrupt("unknown chunk kind");
}

Result<ParsedContainer> parse_container(const uint8_t* bytes, size_t size_bytes) {
  if (size_bytes < kPreambleBytes) return corrupt("file too short for a kvtc container (" + std::to_string(size_bytes) + " bytes)");
  if (!std::equal(kContainerMagic.begin(), kContainerMagic.end(), bytes)) return corrupt("not a kvtc container (bad magic)");
  ByteReader pre(bytes + 8, 8);
  const uint32_t version = pre.u32();
  const uint32_t header_bytes = pre.u32();
  if (version < kOldestContainerVersion || version > kContainerVersion)
    return unsupported("container format version " + std::to_string(version) + " (this build reads versions " +
                       std::to_string(kOldestContainerVersion) + " to " + std::to_string(kContainerVersion) + ")");
  if (header_bytes < 4 || header_bytes > kMaxHeaderBytes || header_bytes > size_bytes - kPreambleBytes)
    return corrupt("header size " + std::to_string(header_bytes) + " does not fit the file (" + std::to_string(size_bytes) + " bytes)");
  const size_t header_end = kPreambleBytes + header_bytes;
  uint32_t stored_crc;
  std::memcpy(&stored_crc, bytes + header_end - 4, 4);
  if (crc32_of(bytes, header_end - 4) != stored_crc) return checksum_mismatch("header checksum mismatch");

  ParsedContainer pc;
  ContainerHeader& h = pc.header;
  h.format_version = version;
  ByteReader r(bytes + kPreambleBytes, header_bytes - 4);
  const uint32_t n_layers = r.u32(), n_kv_heads = r.u32(), head_dim = r.u32();
  const uint8_t rope_style = r.u8(), dtype = r.u8();
  r.u16();
  h.shape.rope.theta = r.f64();
  h.shape.rope.llama3_factor = r.f64();
  h.shape.rope.llama3_low_freq_factor = r.f64();
  h.shape.rope.llama3_high_freq_factor = r.f64();
  h.shape.rope.llama3_original_max_position = r.f64();
  h.position_offset = r.i64();
  h.n_tokens = r.u64();
  h.n_head_exact = r.u32();
  h.n_tail_exact = r.u32();
  h.calibration_fingerprint = r.u64();
  h.target_ratio = r.f64();
  if (!r.ok()) return corrupt("header truncated");
  if (n_layers < 1 || n_layers > 4096) return corrupt("n_layers out of range");
  if (n_kv_heads < 1 || n_kv_heads > 1024) return corrupt("n_kv_heads out of range");
  if (head_dim < 2 || head_dim > 1024 || head_dim % 2 != 0) return corrupt("head_dim out of range");
  if (uint64_t(n_layers) * n_kv_heads * head_dim > (uint64_t(1) << 24)) return corrupt("more than 2^24 features per token");
  if (rope_style > 1) return corrupt("unknown rope_style " + std::to_string(rope_style));
  if (dtype > 2) return corrupt("unknown dtype " + std::to_string(dtype));
  if (!(h.shape.rope.theta > 0) || !std::isfinite(h.shape.rope.theta)) return corrupt("rope_theta out of range");
  if (!std::isfinite(h.shape.rope.llama3_factor) || h.shape.rope.llama3_factor < 0) return corrupt("llama3_factor out of range");
  if (h.n_tokens > (uint64_t(1) << 31)) return corrupt("n_tokens out of range");
  if (uint64_t(h.n_head_exact) + h.n_tail_exact > h.n_tokens) return corrupt("exact tokens exceed n_tokens");
  h.shape.n_layers = int32_t(n_layers);
  h.shape.n_kv_heads = int32_t(n_kv_heads);
  h.shape.head_dim = int32_t(head_dim);
  h.shape.rope.style = RopeStyle(rope_style);
  h.dtype = DType(dtype);

  const uint32_t meta_bytes = r.u32();
  const uint8_t* meta = r.take(meta_bytes);
  if (meta == nullptr) return corrupt("metadata truncated");
  {
    auto j = nlohmann::json::parse(meta, meta + meta_bytes, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return corrupt("metadata is not a JSON object");
    for (auto& [k, v] : j.items()) {
      if (!v.is_string()) return corrupt("metadata value of '" + k + "' is not a string");
      h.metadata[k] = v.get<std::string>();
    }
  }
  const int64_t p = h.shape.n_features();
  for (int s = 0; s < 2; ++s) {
    StreamAllocation& a = h.streams[s];
    a.basis_rank = r.u32();
    if (version >= 3) {
      const uint8_t quantiser = r.u8();
      r.u8();
      r.u16();
      if (!r.ok()) return corrupt("stream allocation truncated");
      if (quantiser > (version >= 4 ? 2 : 1)) return corrupt("unknown quantiser " + std::to_string(quantiser));
      a.quantiser = Quantiser(quantiser);
      if (a.ecsq()) {
        a.ecsq_level = r.u32();
        a.ecsq_level_high = a.token_classes() ? r.u32() : a.ecsq_level;
        a.ecsq_n_kept = r.u32();
        a.ecsq_fingerprint = r.u64();
        if (!r.ok()) return corrupt("stream allocation truncated");
        if (a.basis_rank > p) return corrupt("basis rank exceeds the feature count");
        if (a.ecsq_n_kept > a.basis_rank) return corrupt("ECSQ stream keeps components beyond its basis rank");
        if (a.ecsq_level_high > a.ecsq_level) return corrupt("the high class's ECSQ level is coarser than the base level");
        continue;
      }
    }
    const uint32_t n_groups = r.u32();
    if (!r.ok() || uint64_t(n_groups) * kGroupEntryBytes > r.remaining()) return corrupt("group table truncated");
    if (a.basis_rank > p) return corrupt("basis rank exceeds the feature count");
    a.groups.resize(n_groups);
    for (Group& g : a.groups) {
      g.first_component = r.u32();
      g.n_components = r.u32();
      g.kind = GroupKind(r.u8());
      g.width_bits = r.u8();
      r.u16();
    }
    Status st = check_groups(a, s);
    if (!st.is_ok()) return st;
  }
  const uint32_t n_chunks = r.u32();
  if (!r.ok() || uint64_t(n_chunks) * kChunkEntryBytes != r.remaining())
    return corrupt("chunk table size does not match the header size");
  h.chunks.resize(n_chunks);
  uint64_t next_offset = 0;
  for (uint32_t i = 0; i < n_chunks; ++i) {
    ChunkEntry& c = h.chunks[i];
    const uint8_t kind = r.u8(), stream = r.u8(), layout = r.u8();
    const uint8_t coder = r.u8();  // reserved (ignored) before version 3
    c.token_begin = r.u32();
    c.n_tokens = r.u32();
    c.item_begin = r.u32();
    c.n_items = r.u32();
    c.offset = r.u64();
    c.stored_bytes = r.u32();
    c.raw_bytes = r.u32();
    c.crc32 = r.u32();
    auto where = [i] { return "chunk " + std::to_string(i); };  // named only on error
    if (kind > (version >= 4 ? 3 : 2)) return corrupt(where() + ": unknown kind");
    if (stream > 1) return corrupt(where() + ": unknown stream");
    if (layout > 1 || (kind != 2 && layout != 0)) return corrupt(where() + ": bad layout");
    c.kind = ChunkKind(kind);
    c.stream = stream;
    c.layout = CodesLayout(layout);
    if (version >= 3) {
      // ECSQ streams' codes chunks are rANS-coded; everything else is DEFLATE.
      const bool rans = c.kind == ChunkKind::kCodes && h.streams[stream].ecsq();
      if (coder != (rans ? 1 : 0)) return corrupt(where() + ": coder " + std::to_string(coder) + " where " + (rans ? "1" : "0") + " belongs");
      if (rans && layout != 0) return corrupt(where() + ": bad layout");
      c.coder = ChunkCoder(coder);
    }
    if (c.n_tokens == 0 || uint64_t(c.token_begin) + c.n_tokens > h.n_tokens) return corrupt(where() + ": token range out of bounds");
    if (c.kind == ChunkKind::kExact && c.n_items != 1) return corrupt(where() + ": exact chunk must hold one layer");
    if ((c.kind == ChunkKind::kSide || c.kind == ChunkKind::kClasses) && (c.item_begin != 0 || c.n_items != 0))
      return corrupt(where() + ": side or classes chunk with items");
    if (c.kind == ChunkKind::kCodes && c.n_items == 0) return corrupt(where() + ": empty codes chunk");
    if (c.offset != next_offset) return corrupt(where() + ": not contiguous with the previous chunk");
    if (c.raw_bytes > kMaxChunkRawBytes) return corrupt(where() + ": raw size too large");
    next_offset += c.stored_bytes;
  }
  const uint64_t payload_size = size_bytes - header_end;
  if (next_offset != payload_size)
    return corrupt("payload is " + std::to_string(payload_size) + " bytes but the chunks need " + std::to_string(next_offset));
  Status cov = check_coverage(h);
  if (!cov.is_ok()) return cov;
  for (uint32_t i = 0; i < n_chunks; ++i) {
    auto expect = expected_chunk_raw_bytes(h, h.chunks[i]);
    if (!expect.is_ok()) return expect.status().with_context("chunk " + std::to_string(i));
    if (*expect != h.chunks[i].raw_bytes) return corrupt("chunk " + std::to_string(i) + ": raw size disagrees with its contents");
  }
  pc.payload_offset = header_end;
  return pc;
}

}  // namespace kvtc
