#include "core/ecsq_chunk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "entropy/rans_encode.hpp"
#include "util/parallel.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {
bool has_cell(const EcsqLevel* level, uint32_t j) { return level != nullptr && j < level->cell.size() && level->cell[j] != 0; }
}  // namespace

uint64_t ecsq_chunk_symbols(const EcsqLevel& level, const EcsqLevel* high, uint64_t n_low, uint64_t n_high,
                            uint32_t c0, uint32_t c1) {
  uint64_t n = 0;
  for (uint32_t j = c0; j < c1; ++j) n += (has_cell(&level, j) ? n_low : 0) + (has_cell(high, j) ? n_high : 0);
  return n;
}

std::vector<std::pair<uint32_t, uint32_t>> ecsq_split_components(const EcsqLevel& level, const EcsqLevel* high,
                                                                 uint64_t n_low, uint64_t n_high, uint64_t max_symbols) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  const uint32_t n_kept = std::max(level.n_kept(), high != nullptr ? high->n_kept() : 0u);
  uint32_t begin = 0;
  uint64_t symbols = 0;
  for (uint32_t j = 0; j < n_kept; ++j) {
    const uint64_t w = ecsq_chunk_symbols(level, high, n_low, n_high, j, j + 1);
    if (w == 0) continue;
    if (symbols > 0 && symbols + w > max_symbols) {
      out.push_back({begin, j});
      begin = j;
      symbols = 0;
    }
    symbols += w;
  }
  if (n_kept > 0) out.push_back({begin, n_kept});
  return out;
}

Result<uint64_t> ecsq_chunk_rans_bytes(const uint8_t* chunk, size_t chunk_bytes) {
  if (chunk_bytes < kRansChunkHeaderBytes) return corrupt("ECSQ chunk: truncated");
  uint32_t stream_bytes;
  std::memcpy(&stream_bytes, chunk + kRansStreamBytesOffset, 4);
  const uint64_t rans_bytes = kRansStatesOffset + 4ull * chunk[kRansLanesOffset] + stream_bytes;
  if (rans_bytes + 4 > chunk_bytes) return corrupt("ECSQ chunk: truncated before its raw bits");
  return rans_bytes;
}

std::vector<RansRun> ecsq_chunk_runs(const EcsqModel& model, const EcsqLevel& level, const EcsqLevel* high,
                                     uint64_t n_low, uint64_t n_high, uint32_t c0, uint32_t c1) {
  std::vector<RansRun> runs;
  for (uint32_t j = c0; j < c1; ++j)
    for (int cls = 1; cls >= 0; --cls) {
      const EcsqLevel* l = cls == 1 ? high : &level;
      const uint64_t n = cls == 1 ? n_high : n_low;
      if (!has_cell(l, j) || n == 0) continue;
      runs.push_back({uint32_t(n), &model.cells[j][l->cell[j] - 1u].table});
    }
  return runs;
}

namespace {

class BitWriter {
 public:
  void put(uint32_t value, int n_bits) {
    for (int b = 0; b < n_bits; ++b, ++n_) {
      if (n_ % 8 == 0) bytes_.push_back(0);
      bytes_.back() |= uint8_t(((value >> b) & 1u) << (n_ % 8));
    }
  }
  uint64_t n_bits() const { return n_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
  uint64_t n_ = 0;
};

class BitReader {
 public:
  BitReader(const uint8_t* data, uint64_t n_bits) : data_(data), n_(n_bits) {}
  // False when fewer than n_bits remain.
  bool get(int n_bits, uint32_t& value) {
    if (n_bits > 0 && n_ - pos_ < uint64_t(n_bits)) return false;
    value = 0;
    for (int b = 0; b < n_bits; ++b, ++pos_) value |= uint32_t((data_[pos_ / 8] >> (pos_ % 8)) & 1u) << b;
    return true;
  }
  uint64_t left() const { return n_ - pos_; }

 private:
  const uint8_t* data_;
  uint64_t n_, pos_ = 0;
};

}  // namespace

Status encode_ecsq_chunk(const EcsqModel& model, uint32_t level, const float* coef, int64_t row_stride,
                         int64_t n_tokens, uint32_t c0, uint32_t c1, int n_lanes, std::vector<uint8_t>& out,
                         const uint8_t* classes, uint32_t level_high) {
  if (level >= model.levels.size() || (classes != nullptr && level_high >= model.levels.size()))
    return invalid_argument("ECSQ encode: level " + std::to_string(level) + " out of range");
  const EcsqLevel& lv = model.levels[level];
  const EcsqLevel* hv = classes != nullptr ? &model.levels[level_high] : nullptr;
  if (c1 > model.n_components() || c0 > c1) return invalid_argument("ECSQ encode: component range out of range");
  // Tokens by class, each in token order: class 1 first (section 10).
  std::vector<int64_t> by_class[2];
  for (int64_t t = 0; t < n_tokens; ++t) by_class[classes != nullptr && classes[t] ? 1 : 0].push_back(t);
  const uint64_t n_symbols =
      ecsq_chunk_symbols(lv, hv, by_class[0].size(), by_class[1].size(), c0, c1);
  if (n_symbols > kRansMaxChunkSymbols) return invalid_argument("ECSQ encode: too many symbols for one chunk");
  std::vector<uint8_t> symbols(static_cast<size_t>(n_symbols));
  const std::vector<RansRun> runs = ecsq_chunk_runs(model, lv, hv, by_class[0].size(), by_class[1].size(), c0, c1);
  BitWriter raw;
  size_t i = 0;
  for (uint32_t j = c0; j < c1; ++j) {
    for (int cls = 1; cls >= 0; --cls) {
      const EcsqLevel* l = cls == 1 ? hv : &lv;
      if (!has_cell(l, j) || by_class[cls].empty()) continue;
      const EcsqCell& cell = model.cells[j][l->cell[j] - 1u];
      const uint32_t escape = uint32_t(cell.table.alphabet_size() - 1);
      for (const int64_t t : by_class[cls]) {
        const EcsqSymbol s = ecsq_symbol(ecsq_quantize(coef[t * row_stride + j], cell.step));
        if (s.symbol >= escape) {
          symbols[i++] = uint8_t(escape);
          raw.put(s.symbol, kEcsqEscapeBits);
        } else {
          symbols[i++] = uint8_t(s.symbol);
        }
        raw.put(s.bits, s.n_bits);
      }
    }
  }
  KVTC_RETURN_IF_ERROR(rans_encode(symbols.data(), symbols.size(), runs.data(), runs.size(), n_lanes, out));
  const uint32_t n_raw = uint32_t(raw.n_bits());
  const auto* nb = reinterpret_cast<const uint8_t*>(&n_raw);
  out.insert(out.end(), nb, nb + 4);
  out.insert(out.end(), raw.bytes().begin(), raw.bytes().end());
  return Status::ok();
}

namespace {

// Bits of one component's m coefficients (contiguous) under one cell, in token order.
double component_bits(const EcsqCell& cell, const float* col, int64_t m) {
  const RansTable& t = cell.table;
  std::vector<float> cost(t.freq.size());
  for (size_t s = 0; s < t.freq.size(); ++s)
    cost[s] = float(double(t.prob_bits) - std::log2(double(std::max<uint16_t>(t.freq[s], 1))));
  const uint32_t escape = uint32_t(cost.size() - 1);
  double b = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const EcsqSymbol s = ecsq_symbol(ecsq_quantize(col[i], cell.step));
    b += s.symbol >= escape ? double(cost[escape]) + kEcsqEscapeBits : double(cost[s.symbol]);
    b += s.n_bits;
  }
  return b;
}

constexpr uint32_t kRateColumns = 16;  // components per task: 64 bytes of each coefficient row

}  // namespace

EcsqRateModel::EcsqRateModel(const EcsqModel& model, const float* coef, int64_t row_stride, int64_t n_tokens)
    : model_(model), coef_(coef), row_stride_(row_stride), n_tokens_(n_tokens), bits_(model.n_components()) {
  for (uint32_t j = 0; j < model.n_components(); ++j)
    bits_[j].assign(model.cells[j].size(), std::numeric_limits<double>::quiet_NaN());
}

Result<double> EcsqRateModel::bits(uint32_t level, int n_threads) {
  if (level >= model_.levels.size()) return invalid_argument("ECSQ level beyond the model");
  const EcsqLevel& lv = model_.levels[level];
  const uint32_t n_kept = lv.n_kept();
  if (int64_t(n_kept) > row_stride_) return invalid_argument("ECSQ level keeps more components than the rows hold");
  const int64_t n_blocks = (int64_t(n_kept) + kRateColumns - 1) / kRateColumns;
  KVTC_RETURN_IF_ERROR(parallel_for(n_blocks, n_threads, [&](int64_t blk) -> Status {
    const uint32_t j0 = uint32_t(blk) * kRateColumns, j1 = std::min<uint32_t>(j0 + kRateColumns, n_kept);
    bool any = false;
    for (uint32_t j = j0; j < j1; ++j) any = any || (lv.cell[j] != 0 && std::isnan(bits_[j][lv.cell[j] - 1u]));
    if (!any) return Status::ok();
    std::vector<float> cols(size_t(j1 - j0) * size_t(n_tokens_));
    for (int64_t t = 0; t < n_tokens_; ++t)
      for (uint32_t j = j0; j < j1; ++j) cols[size_t(j - j0) * size_t(n_tokens_) + size_t(t)] = coef_[t * row_stride_ + j];
    for (uint32_t j = j0; j < j1; ++j) {
      if (lv.cell[j] == 0) continue;
      double& b = bits_[j][lv.cell[j] - 1u];  // distinct per task: no race
      if (std::isnan(b))
        b = component_bits(model_.cells[j][lv.cell[j] - 1u], cols.data() + size_t(j - j0) * size_t(n_tokens_), n_tokens_);
    }
    return Status::ok();
  }));
  double total = 0.0;
  for (uint32_t j = 0; j < n_kept; ++j)
    if (lv.cell[j] != 0) total += bits_[j][lv.cell[j] - 1u];
  return total;
}

Result<EcsqDecodeLevel> EcsqDecodeLevel::build(const EcsqModel& model, uint32_t level) {
  if (level >= model.levels.size())
    return corrupt("ECSQ level " + std::to_string(level) + " is beyond the calibration's " +
                   std::to_string(model.levels.size()));
  const EcsqLevel& lv = model.levels[level];
  EcsqDecodeLevel d;
  d.component_.resize(lv.n_kept());
  for (uint32_t j = 0; j < d.component_.size(); ++j) {
    if (lv.cell[j] == 0) continue;
    const EcsqCell& cell = model.cells[j][lv.cell[j] - 1u];
    KVTC_ASSIGN_OR_RETURN(RansDecodeTable t, RansDecodeTable::build(cell.table));
    EcsqDecodeLevel::Component& c = d.component_[j];
    c = {int32_t(d.tables_.size()), cell.step, cell.delta, uint32_t(cell.table.alphabet_size())};
    // Signed symbols up to 2 * kEcsqDirectMax have no bucket bits; the escape (alphabet - 1) has raw bits.
    c.n_direct = std::min<uint32_t>(c.alphabet - 1, 2 * uint32_t(kEcsqDirectMax) + 1);
    c.values_offset = uint32_t(d.values_.size());
    for (uint32_t sym = 0; sym < c.n_direct; ++sym) d.values_.push_back(ecsq_dequantize(ecsq_code(sym, 0), c.step, c.delta));
    d.tables_.push_back(std::move(t));
  }
  return d;
}

namespace {

// One run of a chunk: component j's symbols of `count` tokens (tokens[i], or i itself where tokens is
// null) at one level.
struct DecodeRun {
  uint32_t j;
  const EcsqDecodeLevel* level;
  const int64_t* tokens;
  int64_t count;
};

}  // namespace

Status decode_ecsq_chunk(const EcsqDecodeLevel& level, const uint8_t* chunk, size_t chunk_bytes, uint32_t n_symbols,
                         int64_t n_tokens, uint32_t c0, uint32_t c1, float* coef, int64_t row_stride,
                         const EcsqDecodeLevel* high, const uint8_t* classes) {
  if (high == nullptr) classes = nullptr;
  const uint32_t n_kept = std::max(level.n_kept(), high != nullptr ? high->n_kept() : 0u);
  if (c1 > n_kept || c0 > c1) return corrupt("ECSQ chunk: components beyond the level's kept ones");
  std::vector<int64_t> by_class[2];
  if (classes != nullptr)
    for (int64_t t = 0; t < n_tokens; ++t) by_class[classes[t] ? 1 : 0].push_back(t);
  std::vector<DecodeRun> plan;
  uint64_t expected = 0;
  for (uint32_t j = c0; j < c1; ++j) {
    if (classes == nullptr) {
      if (level.has_cell(j)) plan.push_back({j, &level, nullptr, n_tokens});
      continue;
    }
    if (high->has_cell(j) && !by_class[1].empty()) plan.push_back({j, high, by_class[1].data(), int64_t(by_class[1].size())});
    if (level.has_cell(j) && !by_class[0].empty()) plan.push_back({j, &level, by_class[0].data(), int64_t(by_class[0].size())});
  }
  for (const DecodeRun& r : plan) expected += uint64_t(r.count);
  if (expected != n_symbols)
    return corrupt("ECSQ chunk: " + std::to_string(n_symbols) + " symbols, the level needs " + std::to_string(expected));
  // The rANS chunk's size comes from its own header; the raw bits follow it.
  KVTC_ASSIGN_OR_RETURN(const uint64_t rans_bytes, ecsq_chunk_rans_bytes(chunk, chunk_bytes));
  std::vector<RansDecodeRun> runs;
  for (const DecodeRun& r : plan)
    runs.push_back({uint32_t(r.count), &r.level->table(r.level->component(r.j).table)});
  std::vector<uint8_t> symbols(n_symbols);
  KVTC_RETURN_IF_ERROR(rans_decode(chunk, size_t(rans_bytes), runs.data(), runs.size(), symbols.data(), n_symbols));
  uint32_t n_raw;
  std::memcpy(&n_raw, chunk + rans_bytes, 4);
  const uint64_t raw_bytes = chunk_bytes - rans_bytes - 4;
  if (raw_bytes != (uint64_t(n_raw) + 7) / 8)
    return corrupt("ECSQ chunk: " + std::to_string(raw_bytes) + " bytes of raw bits, the count needs " +
                   std::to_string((uint64_t(n_raw) + 7) / 8));
  const uint8_t* raw_data = chunk + rans_bytes + 4;
  if (n_raw % 8 != 0 && (raw_data[raw_bytes - 1] >> (n_raw % 8)) != 0) return corrupt("ECSQ chunk: nonzero padding bits");
  BitReader raw(raw_data, n_raw);
  size_t i = 0;
  for (const DecodeRun& r : plan) {
    const EcsqDecodeLevel::Component& c = r.level->component(r.j);
    const uint32_t escape = c.alphabet - 1;
    const float* direct = r.level->values(c);
    const uint32_t j = r.j;
    for (int64_t k = 0; k < r.count; ++k) {
      const int64_t t = r.tokens != nullptr ? r.tokens[k] : k;
      uint32_t s = symbols[i++];
      if (s < c.n_direct) {
        coef[t * row_stride + j] = direct[s];
        continue;
      }
      if (s == escape) {
        if (!raw.get(kEcsqEscapeBits, s)) return corrupt("ECSQ chunk: raw bits end inside an escape");
        if (s < escape || s >= uint32_t(kEcsqSignedSymbols))
          return corrupt("ECSQ chunk: escape to symbol " + std::to_string(s) + ", which the table codes or no code has");
      }
      uint32_t bucket = 0;
      if (!raw.get(ecsq_bucket_bits(ecsq_magnitude_symbol(s)), bucket))
        return corrupt("ECSQ chunk: raw bits end inside a bucket");
      coef[t * row_stride + j] = ecsq_dequantize(ecsq_code(s, bucket), c.step, c.delta);
    }
  }
  if (raw.left() != 0) return corrupt("ECSQ chunk: " + std::to_string(raw.left()) + " raw bits left over");
  return Status::ok();
}

}  // namespace kvtc
