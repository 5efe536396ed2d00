// Codes chunks of codec v3 (docs/FORMAT.md, section 9): the coefficients of a token block's
// components [c0, c1) at one ECSQ level, as one rANS chunk of signed symbols (one run per kept
// component, token order within it) followed by the raw bits of buckets and escapes:
//
//   rANS chunk (docs/FORMAT.md, "rANS chunk": 12 + 4 N + S bytes)
//   u32 n_raw_bits
//   ceil(n_raw_bits / 8) bytes, bits least significant first, the unused high bits of the last byte 0
//
// Raw bits follow symbol order: for each symbol, first (if it is the escape) 8 bits of the signed
// symbol, then (if its magnitude is a bucket) the bucket's bits, each value least significant bit first.
// The fast CPU encoder and decoder use these; the reference decoder reads the layout on its own.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/ecsq.hpp"
#include "entropy/rans_chunk.hpp"
#include "entropy/rans_decode.hpp"

namespace kvtc {

// Token classes (format 4, section 10). With them, component j's symbols in a chunk are two runs: first
// the block's class-1 tokens in token order, coded at the `high` level if it has a cell for j, then its
// class-0 tokens at the base level if that has a cell for j. Without classes (high == nullptr) every
// token is of class 0 and there is one run per component, as in format 3.

// Symbols of a chunk over components [c0, c1): n_low per component where `level` has a cell and n_high
// where `high` has one (nullptr: no classes, n_high must be 0).
uint64_t ecsq_chunk_symbols(const EcsqLevel& level, const EcsqLevel* high, uint64_t n_low, uint64_t n_high,
                            uint32_t c0, uint32_t c1);
inline uint64_t ecsq_chunk_symbols(const EcsqLevel& level, uint32_t c0, uint32_t c1, uint64_t n_tokens) {
  return ecsq_chunk_symbols(level, nullptr, n_tokens, 0, c0, c1);
}

// The component ranges of one token block, each chunk at most max_symbols symbols (max_symbols >= the
// block's tokens): the partition of [0, n_kept) an encoder writes, n_kept the larger of the levels'.
std::vector<std::pair<uint32_t, uint32_t>> ecsq_split_components(const EcsqLevel& level, const EcsqLevel* high,
                                                                 uint64_t n_low, uint64_t n_high, uint64_t max_symbols);
inline std::vector<std::pair<uint32_t, uint32_t>> ecsq_split_components(const EcsqLevel& level, uint64_t n_tokens,
                                                                        uint64_t max_symbols) {
  return ecsq_split_components(level, nullptr, n_tokens, 0, max_symbols);
}

// Bytes a chunk adds beyond its symbols' code lengths and raw bits: the rANS header, the lane
// states, the raw-bit count, and on average one byte of padding in each series.
inline uint64_t ecsq_chunk_overhead_bytes(int n_lanes) { return kRansChunkHeaderBytes + 4u * uint64_t(n_lanes) + 4u + 2u; }

// The size of the rANS chunk at the front of a stored codes chunk, from that rANS chunk's header (its
// lanes and stream bytes; the header's other fields are rans_decode's to check). CORRUPT if the stored
// bytes end before that header, or before the raw-bit count that follows the rANS chunk.
Result<uint64_t> ecsq_chunk_rans_bytes(const uint8_t* chunk, size_t chunk_bytes);

// The rANS runs of a chunk over components [c0, c1) with n_low class-0 and n_high class-1 tokens
// (high == nullptr: no classes, n_high 0): for each component in order, its class-1 run at `high`'s
// cell, then its class-0 run at `level`'s, each where the level has a cell and the class has tokens.
// The tables are the model's cells' (model.cells), so the model must outlive the runs.
std::vector<RansRun> ecsq_chunk_runs(const EcsqModel& model, const EcsqLevel& level, const EcsqLevel* high,
                                     uint64_t n_low, uint64_t n_high, uint32_t c0, uint32_t c1);

// Encodes tokens [0, n_tokens) of coefficient rows coef[t * row_stride + j] (components [c0, c1)) into
// one chunk (replacing out). With `classes` (n_tokens bytes, 0 or 1), class-1 tokens are coded at
// level_high. INVALID_ARGUMENT for a level outside the model, too many symbols, or lanes outside 1..64.
Status encode_ecsq_chunk(const EcsqModel& model, uint32_t level, const float* coef, int64_t row_stride,
                         int64_t n_tokens, uint32_t c0, uint32_t c1, int n_lanes, std::vector<uint8_t>& out,
                         const uint8_t* classes = nullptr, uint32_t level_high = 0);

// Rate control's estimate of a level's size on the data: the code lengths of the symbols of every
// kept component (-log2 of their probability under the component's cell table, escapes' 8 bits and
// buckets' raw bits included) of coefficient rows coef[t * row_stride + j], t < n_tokens. Computed once
// per (component, cell) and kept: levels share most of their cells, so a bisection over levels pays
// for each level's new cells only. Components are taken in blocks of 16 columns (copied out of the
// rows, so reads stay contiguous) in parallel; each component's sum runs in token order and levels
// sum components in order, so the result does not depend on the threads or on what is cached.
class EcsqRateModel {
 public:
  EcsqRateModel(const EcsqModel& model, const float* coef, int64_t row_stride, int64_t n_tokens);
  // Bits of components [0, n_kept) of `level` (n_kept <= row_stride).
  Result<double> bits(uint32_t level, int n_threads);

 private:
  const EcsqModel& model_;
  const float* coef_;
  int64_t row_stride_, n_tokens_;
  std::vector<std::vector<double>> bits_;  // [component][cell]: NaN until computed
};

// The decoding form of one level: a RansDecodeTable per component with a cell (built once per stream
// of a container: 2^prob_bits bytes each), its step and offset, and the reconstructions of its
// symbols that need no raw bits.
class EcsqDecodeLevel {
 public:
  static Result<EcsqDecodeLevel> build(const EcsqModel& model, uint32_t level);
  uint32_t n_kept() const { return uint32_t(component_.size()); }
  bool has_cell(uint32_t j) const { return j < component_.size() && component_[j].table >= 0; }

  struct Component {
    int32_t table = -1;  // index into tables_, -1: dropped
    float step = 0.0f, delta = 0.0f;
    uint32_t alphabet = 0;
    // Symbols below n_direct (no escape, no bucket bits) reconstruct to values[s], precomputed with
    // ecsq_dequantize: the decoder's common case is one load.
    uint32_t n_direct = 0;
    uint32_t values_offset = 0;  // into values()
  };
  const float* values(const Component& c) const { return values_.data() + c.values_offset; }
  const Component& component(uint32_t j) const { return component_[j]; }
  const RansDecodeTable& table(int32_t i) const { return tables_[size_t(i)]; }

 private:
  std::vector<Component> component_;  // [n_kept]
  std::vector<RansDecodeTable> tables_;
  std::vector<float> values_;
};

// Decodes one chunk of exactly chunk_bytes (symbol count n_symbols from the chunk table, checked against
// the level) into coef[t * row_stride + j] for t < n_tokens, j in [c0, c1); components without a cell
// are left as they are. CORRUPT for any inconsistency (rANS chunk, escapes naming a symbol the table
// codes, raw bits left over or missing, nonzero padding); never reads outside the chunk.
// With token classes, `high` decodes the class-1 tokens that `classes` (n_tokens bytes, 0 or 1) marks.
Status decode_ecsq_chunk(const EcsqDecodeLevel& level, const uint8_t* chunk, size_t chunk_bytes, uint32_t n_symbols,
                         int64_t n_tokens, uint32_t c0, uint32_t c1, float* coef, int64_t row_stride,
                         const EcsqDecodeLevel* high = nullptr, const uint8_t* classes = nullptr);

}  // namespace kvtc
