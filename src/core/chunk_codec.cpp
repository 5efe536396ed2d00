#include "core/chunk_codec.hpp"

#include <algorithm>
#include <cstring>

namespace kvtc {

void to_byte_planes(const uint8_t* elements, int64_t count, int element_bytes, uint8_t* out) {
  for (int b = 0; b < element_bytes; ++b)
    for (int64_t i = 0; i < count; ++i) out[b * count + i] = elements[i * element_bytes + b];
}

void from_byte_planes(const uint8_t* planes, int64_t count, int element_bytes, uint8_t* out) {
  for (int b = 0; b < element_bytes; ++b)
    for (int64_t i = 0; i < count; ++i) out[i * element_bytes + b] = planes[b * count + i];
}

void pack_side(const StreamAllocation& a, const BlockSymbols& b, std::vector<uint8_t>& raw) {
  std::vector<uint16_t> values;
  for (size_t g = 0; g < a.groups.size(); ++g) values.insert(values.end(), b.side[g].begin(), b.side[g].end());
  raw.resize(values.size() * 2);
  to_byte_planes(reinterpret_cast<const uint8_t*>(values.data()), int64_t(values.size()), 2, raw.data());
}

Status unpack_side(const StreamAllocation& a, const uint8_t* raw, size_t raw_bytes, BlockSymbols& b) {
  const int64_t n = b.n_tokens;
  size_t count = 0;
  for (const Group& g : a.groups) count += size_t(side_bits_per_token(g.kind) / 16) * n;
  if (raw_bytes != count * 2) return corrupt("side chunk has the wrong size");
  std::vector<uint16_t> values(count);
  from_byte_planes(raw, int64_t(count), 2, reinterpret_cast<uint8_t*>(values.data()));
  for (uint16_t v : values)
    if ((v & 0x7c00u) == 0x7c00u) return corrupt("side chunk holds a non-finite scale or shift");
  b.side.assign(a.groups.size(), {});
  size_t pos = 0;
  for (size_t g = 0; g < a.groups.size(); ++g) {
    const size_t k = size_t(side_bits_per_token(a.groups[g].kind) / 16) * n;
    b.side[g].assign(values.begin() + pos, values.begin() + pos + k);
    pos += k;
  }
  return Status::ok();
}

namespace {

// Calls fn(group, j_begin, j_end) for the parts of groups within components [c0, c1).
template <typename Fn>
void for_group_spans(const StreamAllocation& a, uint32_t c0, uint32_t c1, Fn fn) {
  for (const Group& g : a.groups) {
    const uint32_t b = std::max(c0, g.first_component);
    const uint32_t e = std::min(c1, g.first_component + g.n_components);
    if (b < e) fn(g, b, e);
  }
}

// LSB-first bit writer over a byte buffer (zero-initialised).
struct BitWriter {
  uint8_t* out;
  uint64_t bit = 0;
  void put(uint32_t v, int n) {
    for (int i = 0; i < n; ++i, ++bit)
      if ((v >> i) & 1u) out[bit >> 3] |= uint8_t(1u << (bit & 7));
  }
};
struct BitReader {
  const uint8_t* in;
  uint64_t bit = 0;
  uint32_t get(int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i, ++bit) v |= uint32_t((in[bit >> 3] >> (bit & 7)) & 1u) << i;
    return v;
  }
};

}  // namespace

int64_t block_tokens(const StreamAllocation& a, int64_t chunk_tokens, int64_t chunk_max_bytes) {
  int64_t side_bytes_per_token = 0;
  for (const Group& g : a.groups) side_bytes_per_token += side_bits_per_token(g.kind) / 8;
  if (side_bytes_per_token == 0) return chunk_tokens;
  const int64_t fit = std::max<int64_t>(16, chunk_max_bytes / side_bytes_per_token);
  return std::min(chunk_tokens, fit);
}

uint64_t codes_raw_bytes(const StreamAllocation& a, uint64_t n, uint32_t c0, uint32_t c1, CodesLayout layout) {
  uint64_t bytes = 0, bits = 0;
  for_group_spans(a, c0, c1, [&](const Group& g, uint32_t b, uint32_t e) {
    const uint64_t k = e - b;
    if (g.kind == GroupKind::kFloat16) {
      bytes += 2 * n * k;
      bits += 16 * n * k;
    } else if (g.kind != GroupKind::kDropped) {
      bytes += k * ((n * uint64_t(container_width_bits(g.width_bits)) + 7) / 8);
      bits += k * n * g.width_bits;
    }
  });
  return layout == CodesLayout::kAligned ? bytes : (bits + 7) / 8;
}

void pack_codes(const StreamAllocation& a, const BlockSymbols& blk, uint32_t c0, uint32_t c1, CodesLayout layout,
                std::vector<uint8_t>& raw) {
  const int64_t n = blk.n_tokens;
  raw.assign(codes_raw_bytes(a, uint64_t(n), c0, c1, layout), 0);
  if (layout == CodesLayout::kDense) {
    BitWriter w{raw.data()};
    for_group_spans(a, c0, c1, [&](const Group& g, uint32_t b, uint32_t e) {
      if (g.kind == GroupKind::kDropped) return;
      const int bits = g.kind == GroupKind::kFloat16 ? 16 : g.width_bits;
      for (uint32_t j = b; j < e; ++j)
        for (int64_t i = 0; i < n; ++i) w.put(blk.sym[j * n + i], bits);
    });
    return;
  }
  uint8_t* out = raw.data();
  for_group_spans(a, c0, c1, [&](const Group& g, uint32_t b, uint32_t e) {
    if (g.kind == GroupKind::kDropped) return;
    for (uint32_t j = b; j < e; ++j) {
      const uint16_t* s = blk.sym.data() + j * n;
      if (g.kind == GroupKind::kFloat16) {
        to_byte_planes(reinterpret_cast<const uint8_t*>(s), n, 2, out);
        out += 2 * n;
        continue;
      }
      const int cw = container_width_bits(g.width_bits);
      if (cw == 8) {
        for (int64_t i = 0; i < n; ++i) out[i] = uint8_t(s[i]);
      } else {
        const int per_byte = 8 / cw;
        for (int64_t i = 0; i < n; ++i) out[i / per_byte] |= uint8_t(s[i] << ((i % per_byte) * cw));
      }
      out += (n * cw + 7) / 8;
    }
  });
}

Status unpack_codes(const StreamAllocation& a, const uint8_t* raw, size_t raw_bytes, uint32_t c0, uint32_t c1,
                    CodesLayout layout, BlockSymbols& blk) {
  const int64_t n = blk.n_tokens;
  if (raw_bytes != codes_raw_bytes(a, uint64_t(n), c0, c1, layout)) return corrupt("codes chunk has the wrong size");
  if (blk.sym.size() < size_t(c1) * n) blk.sym.resize(size_t(c1) * n);
  if (layout == CodesLayout::kDense) {
    BitReader r{raw};
    bool bad = false;
    for_group_spans(a, c0, c1, [&](const Group& g, uint32_t b, uint32_t e) {
      if (g.kind == GroupKind::kDropped) return;
      const int bits = g.kind == GroupKind::kFloat16 ? 16 : g.width_bits;
      for (uint32_t j = b; j < e; ++j)
        for (int64_t i = 0; i < n; ++i) {
          blk.sym[j * n + i] = uint16_t(r.get(bits));
          bad |= bits == 16 && (blk.sym[j * n + i] & 0x7c00u) == 0x7c00u;
        }
    });
    return bad ? corrupt("codes chunk holds a non-finite fp16 value") : Status::ok();
  }
  const uint8_t* in = raw;
  bool bad_padding = false, bad_value = false;
  for_group_spans(a, c0, c1, [&](const Group& g, uint32_t b, uint32_t e) {
    if (g.kind == GroupKind::kDropped) return;
    for (uint32_t j = b; j < e; ++j) {
      uint16_t* s = blk.sym.data() + j * n;
      if (g.kind == GroupKind::kFloat16) {
        from_byte_planes(in, n, 2, reinterpret_cast<uint8_t*>(s));
        for (int64_t i = 0; i < n; ++i) bad_value |= (s[i] & 0x7c00u) == 0x7c00u;
        in += 2 * n;
        continue;
      }
      const int cw = container_width_bits(g.width_bits);
      const uint32_t mask = (1u << cw) - 1u;
      const int per_byte = 8 / cw;
      for (int64_t i = 0; i < n; ++i) {
        s[i] = cw == 8 ? in[i] : uint16_t((in[i / per_byte] >> ((i % per_byte) * cw)) & mask);
        bad_padding |= (s[i] >> g.width_bits) != 0;
      }
      in += (n * cw + 7) / 8;
    }
  });
  if (bad_padding) return corrupt("codes chunk: a code exceeds its width");
  if (bad_value) return corrupt("codes chunk holds a non-finite fp16 value");
  return Status::ok();
}

std::vector<std::pair<uint32_t, uint32_t>> split_components(const StreamAllocation& a, uint64_t n,
                                                            uint64_t max_bytes) {
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  const uint32_t kept = a.n_kept();
  uint32_t begin = 0;
  uint64_t bytes = 0;
  for_group_spans(a, 0, kept, [&](const Group& g, uint32_t b, uint32_t e) {
    uint64_t per = 0;
    if (g.kind == GroupKind::kFloat16) per = 2 * n;
    else if (g.kind != GroupKind::kDropped) per = (n * uint64_t(container_width_bits(g.width_bits)) + 7) / 8;
    for (uint32_t j = b; j < e; ++j) {
      if (bytes > 0 && bytes + per > max_bytes) {
        ranges.push_back({begin, j});
        begin = j;
        bytes = 0;
      }
      bytes += per;
    }
  });
  if (begin < kept) ranges.push_back({begin, kept});
  return ranges;
}

}  // namespace kvtc
