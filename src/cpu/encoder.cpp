// CPU encoder: gather + unrope -> centre -> project (sgemm) -> quantise per token and group -> pack
// -> DEFLATE, chunk by chunk on all cores. The container layout is docs/FORMAT.md.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <cmath>
#include <mutex>

#include "core/chunk_codec.hpp"
#include "core/plan.hpp"
#include "core/rope.hpp"
#include "core/token_classes.hpp"
#include "core/token_vectors.hpp"
#include "cpu/cpu_backend.hpp"
#include "entropy/deflate.hpp"
#include "util/half.hpp"
#include "util/parallel.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Quantises one token block of one stream into symbols.
BlockSymbols quantize_block(const StreamAllocation& a, const float* coef, int64_t k, int64_t n) {
  BlockSymbols b;
  b.n_tokens = n;
  b.sym.assign(size_t(a.n_kept()) * n, 0);
  b.side.assign(a.groups.size(), {});
  std::vector<uint8_t> codes;
  for (size_t gi = 0; gi < a.groups.size(); ++gi) {
    const Group& g = a.groups[gi];
    if (g.kind == GroupKind::kDropped) continue;
    const int gn = int(g.n_components);
    uint16_t* sym = b.sym.data() + size_t(g.first_component) * n;
    if (g.kind == GroupKind::kFloat16) {
      for (int64_t i = 0; i < n; ++i)
        for (int j = 0; j < gn; ++j) {
          // Saturate: the format holds finite fp16 values only.
          const float c = std::clamp(coef[i * k + g.first_component + j], -65504.0f, 65504.0f);
          sym[j * n + i] = f32_to_f16(std::isnan(c) ? 0.0f : c);
        }
      continue;
    }
    const bool affine = g.kind == GroupKind::kIntAffine;
    b.side[gi].assign(size_t(affine ? 2 * n : n), 0);
    codes.resize(size_t(gn));
    for (int64_t i = 0; i < n; ++i) {
      const TokenQuantParams q = quantize_token(coef + i * k + g.first_component, gn, g.kind, g.width_bits, codes.data());
      b.side[gi][i] = q.scale_f16;
      if (affine) b.side[gi][n + i] = q.shift_f16;
      for (int j = 0; j < gn; ++j) sym[j * n + i] = codes[j];
    }
  }
  return b;
}

Status make_chunk(ChunkEntry entry, const std::vector<uint8_t>& raw, int level, PendingChunk& out) {
  KVTC_RETURN_IF_ERROR(deflate_raw(raw.data(), raw.size(), level, out.stored));
  entry.raw_bytes = uint32_t(raw.size());
  entry.stored_bytes = uint32_t(out.stored.size());
  entry.crc32 = crc32_of(out.stored.data(), out.stored.size());
  out.entry = entry;
  return Status::ok();
}

// Exact tokens of one layer of one stream: elements in the file dtype, [head][token][dim], byte planes.
std::vector<uint8_t> exact_raw(const CacheView& cache, Stream stream, int layer, int64_t t0, int64_t n) {
  const int d = cache.shape.head_dim, h_count = cache.shape.n_kv_heads;
  const int eb = dtype_size_bytes(cache.dtype);
  const int64_t count = int64_t(h_count) * n * d;
  std::vector<uint8_t> elems(static_cast<size_t>(count * eb));
  std::vector<float> row(static_cast<size_t>(d));
  const TensorView& tv = stream == Stream::kKey ? cache.k[size_t(layer)] : cache.v[size_t(layer)];
  const MutableTensorView out{elems.data(), n * d, d};  // [head][token][dim] in the container's dtype
  for (int h = 0; h < h_count; ++h)
    for (int64_t t = t0; t < t0 + n; ++t) {
      read_row_f32(tv, cache.element_dtype, h, t, d, row.data());
      write_row_f32(row.data(), d, cache.dtype, out, h, t - t0);
    }
  std::vector<uint8_t> raw(elems.size());
  to_byte_planes(elems.data(), count, eb, raw.data());
  return raw;
}

}  // namespace

std::vector<float> project_stream(const CalibrationData& cal, const CacheView& cache, Stream stream, int64_t t0,
                                  int64_t m, int64_t k, const RopeTable& rope, StageTimes& times) {
  const PcaBasis& pca = stream == Stream::kKey ? cal.key.pca : cal.value.pca;
  const int64_t p = cal.shape.n_features();
  std::vector<float> coef(static_cast<size_t>(m * k));
  const int64_t block = 512;
  std::vector<float> x(static_cast<size_t>(std::min(block, m) * p));
  for (int64_t b = 0; b < m; b += block) {
    const int64_t n = std::min(block, m - b);
    auto g0 = Clock::now();
    gather_token_vectors(cache, stream, t0 + b, n, stream == Stream::kKey ? &rope : nullptr, x.data());
    for (int64_t t = 0; t < n; ++t) {
      float* row = x.data() + t * p;
      for (int64_t f = 0; f < p; ++f) row[f] -= pca.mean[f];
    }
    times.gather_s += seconds_since(g0);
    auto p0 = Clock::now();
    if (k > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(k), int(p), 1.0f, x.data(), int(p),
                  pca.components.data(), int(p), 0.0f, coef.data() + b * k, int(k));
    times.transform_s += seconds_since(p0);
  }
  return coef;
}

Result<EncodedCache> CpuBackend::encode(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& opt,
                                        StageTimes* times_out) {
  KVTC_RETURN_IF_ERROR(cache.validate());
  return encode_view(cal, CacheView::of(cache), opt, times_out);
}

Result<EncodedCache> CpuBackend::encode_view(const CalibrationData& cal, const CacheView& cache,
                                             const EncodeOptions& opt, StageTimes* times_out) {
  const auto start = Clock::now();
  StageTimes times;
  KVTC_RETURN_IF_ERROR(check_encode_options(opt));
  KVTC_RETURN_IF_ERROR(cache.validate());
  KVTC_ASSIGN_OR_RETURN(ContainerPlan plan, plan_container(cal, cache.shape, cache.dtype, cache.n_tokens,
                                                           cache.position_offset, cache.metadata, opt));
  ContainerHeader& h = plan.header;
  const int64_t t0 = plan.t0, m = plan.m;

  RopeTable rope(cache.shape.rope, cache.shape.head_dim, cache.position_offset, std::max<int64_t>(cache.n_tokens, 1));
  // chunks[0..1]: each stream's coefficient chunks (codec 2: the plan's, filled in place; codec 3:
  // appended by rate control); chunks[2]: the token classes chunk, if any; chunks[3]: the plan's
  // exact chunks.
  std::vector<PendingChunk> chunks[4];
  // Token classes (format 4): their chunk's bytes count against the budget, half to each stream.
  std::vector<uint8_t> classes;
  if (!opt.token_importance.empty()) {
    if (int64_t(opt.token_importance.size()) != cache.n_tokens)
      return invalid_argument("token importance has " + std::to_string(opt.token_importance.size()) +
                              " values for a cache of " + std::to_string(cache.n_tokens) + " tokens");
    if (m > 0) {
      classes = choose_token_classes(opt.token_importance.data() + t0, m, opt.high_rate_fraction);
      ChunkEntry e;
      e.kind = ChunkKind::kClasses;
      e.token_begin = uint32_t(t0);
      e.n_tokens = uint32_t(m);
      chunks[2].emplace_back();
      KVTC_RETURN_IF_ERROR(make_chunk(e, pack_token_classes(classes), opt.deflate_level, chunks[2].back()));
    }
  }
  const double class_bytes_per_stream = chunks[2].empty() ? 0.0 : double(chunks[2][0].stored.size()) / 2.0;
  for (int s = 0; s < 2; ++s) {
    if (opt.codec == 3) {
      KVTC_RETURN_IF_ERROR(encode_stream_ecsq(cal, cache, Stream(s), t0, m, rope, opt,
                                              classes.empty() ? nullptr : classes.data(), class_bytes_per_stream,
                                              h.streams[s], chunks[s], times));
      if (opt.progress) opt.progress(0.45 * (s + 1), "compress");
      continue;
    }
    const StreamAllocation& a = h.streams[s];
    const int64_t k = a.n_kept();
    // The plan's token blocks of this stream: runs of its entries that share token_begin.
    std::vector<std::pair<size_t, size_t>> blocks;
    for (size_t i = 0; i < plan.n_coef_chunks; ++i) {
      const ChunkEntry& e = h.chunks[i];
      if (e.stream != s) continue;
      if (blocks.empty() || h.chunks[blocks.back().first].token_begin != e.token_begin) blocks.push_back({i, i});
      blocks.back().second = i + 1;
    }
    if (blocks.empty()) continue;
    const std::vector<float> coef = project_stream(cal, cache, Stream(s), t0, m, k, rope, times);
    chunks[s].resize(blocks.back().second - blocks.front().first);
    const size_t first = blocks.front().first;
    std::mutex time_mu;
    KVTC_RETURN_IF_ERROR(parallel_for(int64_t(blocks.size()), opt.n_threads, [&](int64_t bi) -> Status {
      const auto [i0, i1] = blocks[size_t(bi)];
      const int64_t b0 = int64_t(h.chunks[i0].token_begin) - t0, n = h.chunks[i0].n_tokens;
      auto q0 = Clock::now();
      const BlockSymbols blk = quantize_block(a, coef.data() + b0 * k, k, n);
      double quant_s = seconds_since(q0), deflate_s = 0;
      std::vector<uint8_t> raw;
      for (size_t i = i0; i < i1; ++i) {
        ChunkEntry e = h.chunks[i];
        PendingChunk& out = chunks[s][i - first];
        auto p0 = Clock::now();
        if (e.kind == ChunkKind::kSide) {
          pack_side(a, blk, raw);
          quant_s += seconds_since(p0);
          auto d0 = Clock::now();
          KVTC_RETURN_IF_ERROR(make_chunk(e, raw, opt.deflate_level, out));
          deflate_s += seconds_since(d0);
          continue;
        }
        const uint32_t c0 = e.item_begin, c1 = e.item_begin + e.n_items;
        pack_codes(a, blk, c0, c1, CodesLayout::kAligned, raw);
        quant_s += seconds_since(p0);
        auto d0 = Clock::now();
        KVTC_RETURN_IF_ERROR(make_chunk(e, raw, opt.deflate_level, out));
        // Dense never exceeds the nominal size: fall back to it when aligned symbols did not compress.
        const uint64_t dense_bytes = codes_raw_bytes(a, uint64_t(n), c0, c1, CodesLayout::kDense);
        if (out.stored.size() > dense_bytes) {
          pack_codes(a, blk, c0, c1, CodesLayout::kDense, raw);
          e.layout = CodesLayout::kDense;
          PendingChunk dense;
          KVTC_RETURN_IF_ERROR(make_chunk(e, raw, opt.deflate_level, dense));
          if (dense.stored.size() < out.stored.size()) out = std::move(dense);
        }
        deflate_s += seconds_since(d0);
      }
      std::lock_guard<std::mutex> lock(time_mu);
      times.quantize_s += quant_s;
      times.deflate_s += deflate_s;
      return Status::ok();
    }));
    if (opt.progress) opt.progress(0.45 * (s + 1), "compress");
  }

  // Exact tokens: the plan's chunks (per stream, layer and segment, each at most chunk_max_bytes raw).
  auto e0 = Clock::now();
  const size_t n_exact = h.chunks.size() - plan.n_coef_chunks;
  chunks[3].resize(n_exact);
  KVTC_RETURN_IF_ERROR(parallel_for(int64_t(n_exact), opt.n_threads, [&](int64_t i) -> Status {
    const ChunkEntry& e = h.chunks[plan.n_coef_chunks + size_t(i)];
    return make_chunk(e, exact_raw(cache, Stream(e.stream), int(e.item_begin), e.token_begin, e.n_tokens),
                      opt.deflate_level, chunks[3][size_t(i)]);
  }));
  times.exact_s += seconds_since(e0);
  if (opt.progress) opt.progress(1.0, "compress");
  h.chunks.clear();

  // Assemble: header, then chunks in table order.
  uint64_t offset = 0;
  int64_t coef_stored = 0;
  for (int c = 0; c < 4; ++c)
    for (auto& pc : chunks[c]) {
      pc.entry.offset = offset;
      offset += pc.stored.size();
      if (c < 3) coef_stored += int64_t(pc.stored.size());  // the compressed tokens' bytes, classes included
      h.chunks.push_back(pc.entry);
    }
  EncodedCache out;
  out.bytes = serialize_container_header(h);
  out.bytes.reserve(out.bytes.size() + offset);
  for (int c = 0; c < 4; ++c)
    for (auto& pc : chunks[c]) out.bytes.insert(out.bytes.end(), pc.stored.begin(), pc.stored.end());

  EncodeReport& r = out.report;
  const int64_t p = cache.shape.n_features();
  r.n_tokens = cache.n_tokens;
  r.n_compressed_tokens = m;
  r.n_exact_tokens = cache.n_tokens - m;
  r.raw_bytes = cache.n_tokens * p * 2 * 2;
  r.file_bytes = int64_t(out.bytes.size());
  r.compressed_payload_bytes = coef_stored;
  r.nominal_payload_bytes = (h.streams[0].nominal_bits_per_token() + h.streams[1].nominal_bits_per_token()) * m / 8;
  const double raw_compressed = double(m) * double(p) * 4.0;
  r.ratio_compressed_tokens = coef_stored > 0 ? raw_compressed / double(coef_stored) : 0.0;
  r.ratio_nominal = r.nominal_payload_bytes > 0 ? raw_compressed / double(r.nominal_payload_bytes) : 0.0;
  r.ratio_file = double(r.raw_bytes) / double(r.file_bytes);
  r.deflate_gain = coef_stored > 0 ? double(r.nominal_payload_bytes) / double(coef_stored) : 0.0;
  r.bytes_per_token = r.n_tokens > 0 ? double(r.file_bytes) / double(r.n_tokens) : 0.0;
  r.codec = opt.codec;
  for (int s = 0; s < 2; ++s) {
    r.ecsq_level[s] = h.streams[s].ecsq() ? int(h.streams[s].ecsq_level) : -1;
    r.ecsq_level_high[s] = h.streams[s].token_classes() ? int(h.streams[s].ecsq_level_high) : -1;
  }
  for (uint8_t c : classes) r.n_high_rate_tokens += c;
  times.total_s = seconds_since(start);
  r.seconds = times.total_s;
  if (times_out) *times_out = times;
  return out;
}

}  // namespace kvtc
