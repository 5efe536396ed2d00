// CPU encoder: gather + unrope -> centre -> project (sgemm) -> quantise per token and group -> pack
// -> DEFLATE, chunk by chunk on all cores. The container layout is docs/FORMAT.md.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <cmath>
#include <mutex>

#include "core/chunk_codec.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"
#include "cpu/cpu_backend.hpp"
#include "cpu/deflate.hpp"
#include "util/half.hpp"
#include "util/parallel.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Status check_encode_options(const EncodeOptions& o) {
  if (!(o.target_ratio >= 1.0) || !std::isfinite(o.target_ratio)) return invalid_argument("target ratio must be >= 1");
  if (o.deflate_level < 1 || o.deflate_level > 12) return invalid_argument("deflate level must be 1..12");
  if (o.chunk_tokens < 1 || o.chunk_tokens > 65536) return invalid_argument("chunk tokens must be 1..65536");
  if (o.exact_head_tokens < -1 || o.exact_tail_tokens < -1)
    return invalid_argument("exact head and tail tokens must be >= 0, or -1 for the calibration's");
  if (o.chunk_max_bytes < 256 || o.chunk_max_bytes > (int64_t(1) << 26)) return invalid_argument("chunk max bytes must be 256..64 MiB");
  if (o.codec != 2 && o.codec != 3) return invalid_argument("codec must be 2 or 3");
  if (o.rans_lanes < 1 || o.rans_lanes > 64) return invalid_argument("rANS lanes must be 1..64");
  return Status::ok();
}

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
  if (!(cache.shape == cal.shape))
    return mismatch("cache is " + cache.shape.to_string() + " but the calibration is for " + cal.shape.to_string());

  ContainerHeader h;
  h.shape = cache.shape;
  h.dtype = cache.dtype;
  h.position_offset = cache.position_offset;
  h.n_tokens = uint64_t(cache.n_tokens);
  const ExactTokens exact = exact_tokens(cal, cache.n_tokens, opt);
  h.n_head_exact = uint32_t(exact.head);
  h.n_tail_exact = uint32_t(exact.tail);
  h.calibration_fingerprint = cal.fingerprint;
  h.target_ratio = opt.target_ratio;
  h.metadata = cache.metadata;
  const int64_t t0 = h.n_head_exact, m = int64_t(h.n_compressed_tokens());

  RopeTable rope(cache.shape.rope, cache.shape.head_dim, cache.position_offset, std::max<int64_t>(cache.n_tokens, 1));
  std::vector<PendingChunk> chunks[3];  // K coefficient chunks, V coefficient chunks, exact chunks
  for (int s = 0; s < 2; ++s) {
    if (opt.codec == 3) {
      KVTC_RETURN_IF_ERROR(encode_stream_ecsq(cal, cache, Stream(s), t0, m, rope, opt, h.streams[s], chunks[s], times));
      if (opt.progress) opt.progress(0.45 * (s + 1), "compress");
      continue;
    }
    KVTC_ASSIGN_OR_RETURN(Allocation alloc, allocation_for_ratio(cal, s, opt.target_ratio));
    StreamAllocation& a = h.streams[s];
    a.basis_rank = uint32_t((s == 0 ? cal.key : cal.value).pca.rank);
    a.groups = alloc.groups;
    const int64_t k = a.n_kept();
    if (m == 0 || k == 0) continue;
    const std::vector<float> coef = project_stream(cal, cache, Stream(s), t0, m, k, rope, times);
    bool has_side = false;
    for (const Group& g : a.groups) has_side |= side_bits_per_token(g.kind) > 0;
    const int64_t block = block_tokens(a, opt.chunk_tokens, opt.chunk_max_bytes);
    const int64_t n_blocks = (m + block - 1) / block;
    std::vector<std::vector<PendingChunk>> per_block(static_cast<size_t>(n_blocks));
    std::mutex time_mu;
    KVTC_RETURN_IF_ERROR(parallel_for(n_blocks, opt.n_threads, [&](int64_t bi) -> Status {
      const int64_t b0 = bi * block, n = std::min<int64_t>(block, m - b0);
      auto q0 = Clock::now();
      const BlockSymbols blk = quantize_block(a, coef.data() + b0 * k, k, n);
      double quant_s = seconds_since(q0), deflate_s = 0;
      ChunkEntry base;
      base.stream = uint8_t(s);
      base.token_begin = uint32_t(t0 + b0);
      base.n_tokens = uint32_t(n);
      std::vector<uint8_t> raw;
      auto& out = per_block[size_t(bi)];
      if (has_side) {
        pack_side(a, blk, raw);
        ChunkEntry e = base;
        e.kind = ChunkKind::kSide;
        out.emplace_back();
        auto d0 = Clock::now();
        KVTC_RETURN_IF_ERROR(make_chunk(e, raw, opt.deflate_level, out.back()));
        deflate_s += seconds_since(d0);
      }
      for (const auto& [c0, c1] : split_components(a, uint64_t(n), uint64_t(opt.chunk_max_bytes))) {
        ChunkEntry e = base;
        e.kind = ChunkKind::kCodes;
        e.item_begin = c0;
        e.n_items = c1 - c0;
        auto p0 = Clock::now();
        pack_codes(a, blk, c0, c1, CodesLayout::kAligned, raw);
        quant_s += seconds_since(p0);
        out.emplace_back();
        auto d0 = Clock::now();
        KVTC_RETURN_IF_ERROR(make_chunk(e, raw, opt.deflate_level, out.back()));
        // Dense never exceeds the nominal size: fall back to it when aligned symbols did not compress.
        const uint64_t dense_bytes = codes_raw_bytes(a, uint64_t(n), c0, c1, CodesLayout::kDense);
        if (out.back().stored.size() > dense_bytes) {
          pack_codes(a, blk, c0, c1, CodesLayout::kDense, raw);
          e.layout = CodesLayout::kDense;
          PendingChunk dense;
          KVTC_RETURN_IF_ERROR(make_chunk(e, raw, opt.deflate_level, dense));
          if (dense.stored.size() < out.back().stored.size()) out.back() = std::move(dense);
        }
        deflate_s += seconds_since(d0);
      }
      std::lock_guard<std::mutex> lock(time_mu);
      times.quantize_s += quant_s;
      times.deflate_s += deflate_s;
      return Status::ok();
    }));
    for (auto& v : per_block)
      for (auto& c : v) chunks[s].push_back(std::move(c));
    if (opt.progress) opt.progress(0.45 * (s + 1), "compress");
  }

  // Exact tokens: per stream, segment and layer, in chunks of at most chunk_max_bytes raw (one token
  // at least), so that no chunk is a long serial stream for a GPU warp (format version 2).
  auto e0 = Clock::now();
  struct ExactJob { int s, layer; int64_t t0, n; };
  std::vector<ExactJob> jobs;
  const int64_t token_bytes = int64_t(cache.shape.n_kv_heads) * cache.shape.head_dim * dtype_size_bytes(cache.dtype);
  const int64_t exact_chunk_tokens = std::max<int64_t>(1, opt.chunk_max_bytes / token_bytes);
  auto add_segment = [&](int s, int l, int64_t begin, int64_t n) {
    for (int64_t t = begin; t < begin + n; t += exact_chunk_tokens)
      jobs.push_back({s, l, t, std::min(exact_chunk_tokens, begin + n - t)});
  };
  for (int s = 0; s < 2; ++s)
    for (int l = 0; l < cache.shape.n_layers; ++l) {
      if (h.n_head_exact > 0) add_segment(s, l, 0, h.n_head_exact);
      if (h.n_tail_exact > 0) add_segment(s, l, cache.n_tokens - h.n_tail_exact, h.n_tail_exact);
    }
  chunks[2].resize(jobs.size());
  KVTC_RETURN_IF_ERROR(parallel_for(int64_t(jobs.size()), opt.n_threads, [&](int64_t i) -> Status {
    const ExactJob& j = jobs[size_t(i)];
    ChunkEntry e;
    e.kind = ChunkKind::kExact;
    e.stream = uint8_t(j.s);
    e.token_begin = uint32_t(j.t0);
    e.n_tokens = uint32_t(j.n);
    e.item_begin = uint32_t(j.layer);
    e.n_items = 1;
    return make_chunk(e, exact_raw(cache, Stream(j.s), j.layer, j.t0, j.n), opt.deflate_level, chunks[2][size_t(i)]);
  }));
  times.exact_s += seconds_since(e0);
  if (opt.progress) opt.progress(1.0, "compress");

  // Assemble: header, then chunks in table order.
  uint64_t offset = 0;
  int64_t coef_stored = 0;
  for (int c = 0; c < 3; ++c)
    for (auto& pc : chunks[c]) {
      pc.entry.offset = offset;
      offset += pc.stored.size();
      if (c < 2) coef_stored += int64_t(pc.stored.size());
      h.chunks.push_back(pc.entry);
    }
  EncodedCache out;
  out.bytes = serialize_container_header(h);
  out.bytes.reserve(out.bytes.size() + offset);
  for (int c = 0; c < 3; ++c)
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
  for (int s = 0; s < 2; ++s) r.ecsq_level[s] = h.streams[s].ecsq() ? int(h.streams[s].ecsq_level) : -1;
  times.total_s = seconds_since(start);
  r.seconds = times.total_s;
  if (times_out) *times_out = times;
  return out;
}

}  // namespace kvtc
