#include "core/reference_decoder.hpp"

#include <zlib.h>

#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "core/backend.hpp"
#include "entropy/rans_reference.hpp"
#include "format/container.hpp"
#include "util/half.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

// Section 4: a chunk is a raw DEFLATE stream inflating to exactly raw_bytes.
Status zlib_inflate(const uint8_t* in, size_t in_bytes, std::vector<uint8_t>& out, size_t raw_bytes) {
  out.assign(raw_bytes + 1, 0);  // one spare byte detects streams that run long
  z_stream z{};
  if (inflateInit2(&z, -15) != Z_OK) return internal_error("inflateInit2 failed");
  z.next_in = const_cast<Bytef*>(in);
  z.avail_in = uInt(in_bytes);
  z.next_out = out.data();
  z.avail_out = uInt(out.size());
  const int rc = inflate(&z, Z_FINISH);
  const size_t produced = out.size() - z.avail_out;
  const size_t left_in = z.avail_in;
  inflateEnd(&z);
  if (rc != Z_STREAM_END) return corrupt("chunk is not a complete DEFLATE stream");
  if (produced != raw_bytes) return corrupt("chunk inflates to the wrong size");
  if (left_in != 0) return corrupt("chunk has bytes after its DEFLATE stream");
  out.resize(raw_bytes);
  return Status::ok();
}

// Section 5: byte planes of 2-byte values.
uint16_t plane16(const uint8_t* raw, size_t count, size_t i) { return uint16_t(raw[i] | (raw[count + i] << 8)); }

bool finite_f16(uint32_t bits) { return (bits & 0x7c00u) != 0x7c00u; }

uint32_t read_bits(const uint8_t* raw, uint64_t& bit, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i, ++bit) v |= uint32_t((raw[bit / 8] >> (bit % 8)) & 1) << i;
  return v;
}

uint32_t read_u32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

// Section 9, one codes chunk of an ECSQ stream (coder 1): the rANS chunk of signed symbols, decoded by
// the reference rANS decoder, then the raw bits, then the reconstruction rule. Written from the spec's
// text, not from ecsq.hpp / ecsq_chunk.cpp, so that a misreading there shows up as a disagreement.
// Writes coefficient (t, j) to coef[(t - c0) * rank + j] for the chunk's tokens and components.
// Section 10 (format 4): with token classes, token t (compressed-token index classes[t - c0]) of class 1
// takes the level ecsq_level_high, and component j's symbols are those of the class-1 tokens in token
// order, then those of the class-0 tokens, each only where its level has a cell for j.
Status decode_ecsq_codes(const EcsqModel& model, const StreamAllocation& a, const ChunkEntry& c, const uint8_t* stored,
                         int64_t c0, const std::vector<uint8_t>& classes, std::vector<double>& coef) {
  // The levels were checked against the model.
  const EcsqLevel* level_of[2] = {&model.levels[a.ecsq_level], &model.levels[a.ecsq_level_high]};
  // Each component's runs: (level, the chunk's tokens it codes).
  struct Run {
    uint32_t j;
    const EcsqCell* cell;
    std::vector<int64_t> tokens;  // offsets from c.token_begin
  };
  std::vector<Run> plan;
  std::vector<RansRun> runs;
  uint64_t n_symbols = 0;
  for (uint32_t j = c.item_begin; j < c.item_begin + c.n_items; ++j) {
    for (int cls = 1; cls >= 0; --cls) {
      if (cls == 1 && !a.token_classes()) continue;
      const EcsqLevel& level = *level_of[cls];
      if (j >= level.cell.size() || level.cell[j] == 0) continue;
      Run r{j, &model.cells[j][level.cell[j] - 1u], {}};
      for (int64_t k = 0; k < int64_t(c.n_tokens); ++k) {
        const int token_class = a.token_classes() ? classes[size_t(int64_t(c.token_begin) + k - c0)] : 0;
        if (token_class == cls) r.tokens.push_back(k);
      }
      if (r.tokens.empty()) continue;
      runs.push_back({uint32_t(r.tokens.size()), &r.cell->table});
      n_symbols += r.tokens.size();
      plan.push_back(std::move(r));
    }
  }
  if (c.raw_bytes > 65536 || c.raw_bytes != n_symbols || (n_symbols == 0 && !a.token_classes()))
    return corrupt("symbol count " + std::to_string(c.raw_bytes) + " where the level has " + std::to_string(n_symbols));
  // Chunk bytes: a rANS chunk of 12 + 4N + S bytes (N at offset 4, S at offset 8), u32 n_raw_bits, the bits.
  if (c.stored_bytes < 12) return corrupt("ECSQ chunk shorter than a rANS chunk header");
  const uint64_t rans_bytes = 12 + 4 * uint64_t(stored[4]) + read_u32(stored + 8);
  if (rans_bytes + 4 > c.stored_bytes) return corrupt("ECSQ chunk ends before its raw bit count");
  const uint64_t n_raw_bits = read_u32(stored + rans_bytes);
  if (c.stored_bytes != rans_bytes + 4 + (n_raw_bits + 7) / 8) return corrupt("ECSQ chunk size disagrees with its raw bit count");
  std::vector<uint8_t> symbols(static_cast<size_t>(n_symbols));
  KVTC_RETURN_IF_ERROR(rans_decode_reference(stored, size_t(rans_bytes), runs.data(), runs.size(), symbols.data(), symbols.size()));
  const uint8_t* raw = stored + rans_bytes + 4;
  // The unused high bits of the last byte are 0.
  for (uint64_t b = n_raw_bits; b < (n_raw_bits + 7) / 8 * 8; ++b)
    if ((raw[b / 8] >> (b % 8)) & 1) return corrupt("ECSQ chunk: nonzero padding after the raw bits");
  uint64_t bit = 0;
  auto take = [&](int n, uint32_t& v) {  // n raw bits, least significant first; false if missing
    if (bit + uint64_t(n) > n_raw_bits) return false;
    v = read_bits(raw, bit, n);
    return true;
  };
  size_t i = 0;
  for (const Run& r : plan) {  // a component without a cell at a token's level: its c_j stays 0
    const uint32_t j = r.j;
    const EcsqCell& cell = *r.cell;
    const uint32_t A = uint32_t(cell.table.freq.size());
    for (const int64_t k : r.tokens) {
      uint32_t s = symbols[i++];
      if (s == A - 1) {  // the escape: 8 raw bits hold the signed symbol, which the table does not code
        if (!take(8, s)) return corrupt("ECSQ chunk: raw bits missing for an escape");
        if (s < A - 1 || s > 240) return corrupt("ECSQ chunk: escape to signed symbol " + std::to_string(s));
      }
      // Signed symbol s: 0 for q = 0, 2m - 1 for q > 0, 2m for q < 0.
      double value = 0.0;
      if (s != 0) {
        const uint32_t m = s % 2 == 1 ? (s + 1) / 2 : s / 2;
        uint32_t mag = m;
        if (m > 100) {  // a bucket: e = m - 101 bits holding |q| - 100 - 2^e
          const int e = int(m) - 101;
          uint32_t low = 0;
          if (!take(e, low)) return corrupt("ECSQ chunk: raw bits missing for a bucket");
          mag = 100 + (uint32_t(1) << e) + low;
        }
        // v = (float(|q|) + delta) * step in binary32, two roundings: the sum is rounded to float before the
        // product (an ISO C++ build does not contract these into a fused multiply-add).
        const float sum = float(mag) + cell.delta;
        const float v = sum * cell.step;
        value = s % 2 == 1 ? v : -v;
      }
      coef[size_t(int64_t(c.token_begin) + k - c0) * a.basis_rank + j] = value;
    }
  }
  if (bit != n_raw_bits) return corrupt("ECSQ chunk: " + std::to_string(n_raw_bits - bit) + " raw bits left over");
  return Status::ok();
}

// Section 6, step 4: RoPE at one position, from the formula, in double precision.
void rope_forward(float* x, int d, double position, const RopeParams& rope) {
  const std::vector<double> inv_freq = rope.inv_freq(d);
  for (int i = 0; i < d / 2; ++i) {
    const int a = rope.style == RopeStyle::kHalf ? i : 2 * i;
    const int b = rope.style == RopeStyle::kHalf ? i + d / 2 : 2 * i + 1;
    const double angle = position * inv_freq[size_t(i)];
    const double xa = x[a], xb = x[b];
    x[a] = float(xa * std::cos(angle) - xb * std::sin(angle));
    x[b] = float(xa * std::sin(angle) + xb * std::cos(angle));
  }
}

}  // namespace

Result<KVCache> reference_decode(const CalibrationData& cal, const uint8_t* bytes, size_t size_bytes,
                                 ReferenceCoefficients* coefficients) {
  // Sections 2-4.
  KVTC_ASSIGN_OR_RETURN(ParsedContainer pc, parse_container(bytes, size_bytes));
  const ContainerHeader& h = pc.header;
  KVTC_RETURN_IF_ERROR(check_container_matches(cal, h));
  const int L = h.shape.n_layers, H = h.shape.n_kv_heads, D = h.shape.head_dim;
  const int64_t T = int64_t(h.n_tokens), p = h.shape.n_features();
  const int64_t c0 = h.n_head_exact, c1 = T - h.n_tail_exact;

  KVCache out;
  out.shape = h.shape;
  out.dtype = h.dtype;
  out.n_tokens = T;
  out.position_offset = h.position_offset;
  out.metadata = h.metadata;
  out.k.assign(size_t(L), std::vector<float>(size_t(H) * T * D, 0.0f));
  out.v = out.k;

  // Coefficients per stream and compressed token: c[s][(t - c0) * rank + j].
  std::vector<double> coef[2];
  for (int s = 0; s < 2; ++s) coef[s].assign(size_t(c1 - c0) * h.streams[s].basis_rank, 0.0);
  // Side values per stream, group and token: scales and shifts.
  std::vector<std::vector<float>> scale[2], shift[2];
  for (int s = 0; s < 2; ++s) {
    scale[s].assign(h.streams[s].groups.size(), std::vector<float>(size_t(T), 0.0f));
    shift[s] = scale[s];
  }

  // Section 5, in two passes: side chunks (scales), then codes and exact chunks.
  // Section 10: one class per compressed token (format 4), read with the side chunks.
  std::vector<uint8_t> classes;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t ci = 0; ci < h.chunks.size(); ++ci) {
      const ChunkEntry& c = h.chunks[ci];
      if ((pass == 0) != (c.kind == ChunkKind::kSide || c.kind == ChunkKind::kClasses)) continue;
      const std::string where = "chunk " + std::to_string(ci);
      const uint8_t* stored = bytes + pc.payload_offset + c.offset;
      if (crc32(0L, stored, uInt(c.stored_bytes)) != c.crc32) return checksum_mismatch(where + ": checksum mismatch");
      if (c.kind == ChunkKind::kCodes && h.streams[c.stream].ecsq()) {  // section 9 (parse checked coder 1)
        const EcsqModel& model = c.stream == 0 ? cal.key.ecsq : cal.value.ecsq;
        KVTC_RETURN_IF_ERROR(
            decode_ecsq_codes(model, h.streams[c.stream], c, stored, c0, classes, coef[c.stream]).with_context(where));
        continue;
      }
      std::vector<uint8_t> raw;
      KVTC_RETURN_IF_ERROR(zlib_inflate(stored, c.stored_bytes, raw, c.raw_bytes).with_context(where));
      if (c.kind == ChunkKind::kClasses) {  // bit t of byte t / 8, least significant first; padding bits 0
        classes.assign(c.n_tokens, 0);
        for (uint64_t t = 0; t < uint64_t(raw.size()) * 8; ++t) {
          const uint8_t bit = (raw[t / 8] >> (t % 8)) & 1;
          if (t < c.n_tokens) classes[t] = bit;
          else if (bit) return corrupt(where + ": classes chunk has padding bits set");
        }
        continue;
      }
      const StreamAllocation& a = h.streams[c.stream];
      const int64_t n = c.n_tokens;
      if (c.kind == ChunkKind::kSide) {
        const size_t count = raw.size() / 2;
        for (size_t i = 0; i < count; ++i)
          if (!finite_f16(plane16(raw.data(), count, i))) return corrupt(where + ": non-finite scale or shift");
        size_t pos = 0;
        for (size_t g = 0; g < a.groups.size(); ++g) {
          const GroupKind kind = a.groups[g].kind;
          if (kind != GroupKind::kInt && kind != GroupKind::kIntAffine) continue;
          for (int64_t i = 0; i < n; ++i) scale[c.stream][g][size_t(c.token_begin + i)] = f16_to_f32(plane16(raw.data(), count, pos + i));
          pos += size_t(n);
          if (kind == GroupKind::kIntAffine) {
            for (int64_t i = 0; i < n; ++i) shift[c.stream][g][size_t(c.token_begin + i)] = f16_to_f32(plane16(raw.data(), count, pos + i));
            pos += size_t(n);
          }
        }
      } else if (c.kind == ChunkKind::kExact) {
        const int eb = dtype_size_bytes(h.dtype);
        const size_t count = raw.size() / size_t(eb);
        std::vector<float>& dst = c.stream == 0 ? out.k[c.item_begin] : out.v[c.item_begin];
        size_t e = 0;
        for (int hh = 0; hh < H; ++hh)
          for (int64_t t = c.token_begin; t < int64_t(c.token_begin) + n; ++t)
            for (int d = 0; d < D; ++d, ++e) {
              uint8_t el[4] = {0, 0, 0, 0};
              for (int b = 0; b < eb; ++b) el[b] = raw[size_t(b) * count + e];
              float v;
              if (h.dtype == DType::kF32) {
                std::memcpy(&v, el, 4);
              } else {
                const uint16_t bits = uint16_t(el[0] | (el[1] << 8));
                v = h.dtype == DType::kBF16 ? bf16_to_f32(bits) : f16_to_f32(bits);
              }
              dst[(size_t(hh) * T + t) * D + d] = v;
            }
      } else {
        uint64_t bit = 0;
        size_t byte_pos = 0;
        for (uint32_t j = c.item_begin; j < c.item_begin + c.n_items; ++j) {
          size_t g = 0;
          while (!(j >= a.groups[g].first_component && j < a.groups[g].first_component + a.groups[g].n_components)) ++g;
          const Group& grp = a.groups[g];
          if (grp.kind == GroupKind::kDropped) continue;
          for (int64_t i = 0; i < n; ++i) {
            const int64_t t = c.token_begin + i;
            uint32_t sym;
            if (c.layout == CodesLayout::kDense) {
              sym = read_bits(raw.data(), bit, grp.kind == GroupKind::kFloat16 ? 16 : grp.width_bits);
            } else if (grp.kind == GroupKind::kFloat16) {
              sym = uint32_t(raw[byte_pos + size_t(i)] | (raw[byte_pos + size_t(n + i)] << 8));
            } else {
              const int cw = container_width_bits(grp.width_bits);
              uint64_t b = uint64_t(byte_pos) * 8 + uint64_t(i) * cw;
              sym = read_bits(raw.data(), b, cw);
              if (sym >> grp.width_bits) return corrupt(where + ": code exceeds its width");
            }
            double value;
            if (grp.kind == GroupKind::kFloat16) {
              if (!finite_f16(sym)) return corrupt(where + ": non-finite fp16 value");
              value = f16_to_f32(uint16_t(sym));
            } else if (grp.kind == GroupKind::kInt) {
              value = (float(sym) - float((1 << grp.width_bits) - 1) * 0.5f) * scale[c.stream][g][size_t(t)];
            } else {
              value = shift[c.stream][g][size_t(t)] + float(sym) * scale[c.stream][g][size_t(t)];
            }
            coef[c.stream][size_t(t - c0) * a.basis_rank + j] = value;
          }
          if (c.layout == CodesLayout::kAligned)
            byte_pos += grp.kind == GroupKind::kFloat16 ? size_t(2 * n) : size_t((n * container_width_bits(grp.width_bits) + 7) / 8);
        }
      }
    }
  }

  // Section 6: x = mean + sum_j c_j v_j, features to (layer, head, dim), RoPE on keys.
  std::vector<double> x(static_cast<size_t>(p));
  std::vector<float> head(static_cast<size_t>(D));
  for (int s = 0; s < 2; ++s) {
    const PcaBasis& pca = s == 0 ? cal.key.pca : cal.value.pca;
    const uint32_t rank = h.streams[s].basis_rank;
    for (int64_t t = c0; t < c1; ++t) {
      for (int64_t f = 0; f < p; ++f) x[size_t(f)] = pca.mean[size_t(f)];
      for (uint32_t j = 0; j < rank; ++j) {
        const double cj = coef[s][size_t(t - c0) * rank + j];
        if (cj == 0.0) continue;
        const float* vj = pca.components.data() + size_t(j) * size_t(p);
        for (int64_t f = 0; f < p; ++f) x[size_t(f)] += cj * vj[f];
      }
      for (int l = 0; l < L; ++l)
        for (int hh = 0; hh < H; ++hh) {
          for (int d = 0; d < D; ++d) head[size_t(d)] = float(x[size_t((int64_t(l) * H + hh) * D + d)]);
          if (s == 0) rope_forward(head.data(), D, double(h.position_offset + t), h.shape.rope);
          std::vector<float>& dst = s == 0 ? out.k[size_t(l)] : out.v[size_t(l)];
          std::memcpy(&dst[(size_t(hh) * T + size_t(t)) * D], head.data(), sizeof(float) * D);
        }
    }
  }
  out.sync_metadata();
  if (coefficients != nullptr)
    for (int s = 0; s < 2; ++s) coefficients->coef[s] = std::move(coef[s]);
  return out;
}

}  // namespace kvtc
