// CPU decoder: inflate every chunk and dequantise coefficients once (all cores), then reconstruct a
// layer at a time with one sgemm over that layer's basis columns, re-applying RoPE to keys.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>

#include "core/chunk_codec.hpp"
#include "core/ecsq_chunk.hpp"
#include "core/rope.hpp"
#include "core/token_classes.hpp"
#include "cpu/cpu_backend.hpp"
#include "entropy/deflate.hpp"
#include "util/half.hpp"
#include "util/parallel.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Status inflate_chunk(const uint8_t* payload, const ChunkEntry& c, bool verify, std::vector<uint8_t>& raw) {
  const uint8_t* stored = payload + c.offset;
  if (verify && crc32_of(stored, c.stored_bytes) != c.crc32) return checksum_mismatch("chunk checksum mismatch");
  raw.resize(c.raw_bytes);
  return inflate_raw(stored, c.stored_bytes, raw.data(), raw.size());
}

// Dequantises components [c0, c1) of a block into coef rows [n][k] (token-major): codes from `b`,
// per-token scales and shifts from the block's side chunk `side`.
void dequantize_block(const StreamAllocation& a, const BlockSymbols& b, const BlockSymbols& side, uint32_t c0,
                      uint32_t c1, float* coef, int64_t k) {
  const int64_t n = b.n_tokens;
  for (size_t gi = 0; gi < a.groups.size(); ++gi) {
    const Group& g = a.groups[gi];
    const uint32_t jb = std::max(c0, g.first_component), je = std::min(c1, g.first_component + g.n_components);
    if (jb >= je || g.kind == GroupKind::kDropped) continue;
    if (g.kind == GroupKind::kFloat16) {
      for (uint32_t j = jb; j < je; ++j)
        for (int64_t i = 0; i < n; ++i) coef[i * k + j] = f16_to_f32(b.sym[j * n + i]);
      continue;
    }
    const bool affine = g.kind == GroupKind::kIntAffine;
    for (int64_t i = 0; i < n; ++i) {
      const float scale = f16_to_f32(side.side[gi][i]);
      const float shift = affine ? f16_to_f32(side.side[gi][n + i]) : 0.0f;
      for (uint32_t j = jb; j < je; ++j)
        coef[i * k + j] = dequantize_value(uint8_t(b.sym[j * n + i]), g.kind, g.width_bits, scale, shift);
    }
  }
}

}  // namespace

Result<DecodedCoefficients> CpuBackend::decode_coefficients(const CalibrationData& cal, const uint8_t* bytes,
                                                            size_t size_bytes, const DecodeOptions& opt,
                                                            StageTimes* times_out) {
  const auto start = Clock::now();
  StageTimes times;
  DecodedCoefficients dec;
  KVTC_ASSIGN_OR_RETURN(dec.container, parse_container(bytes, size_bytes));
  const ContainerHeader& h = dec.container.header;
  KVTC_RETURN_IF_ERROR(check_container_matches(cal, h));
  const uint8_t* payload = bytes + dec.container.payload_offset;
  const int64_t t0 = h.n_head_exact, m = int64_t(h.n_compressed_tokens());
  for (int s = 0; s < 2; ++s) dec.coef[s].assign(size_t(m) * h.streams[s].n_kept(), 0.0f);
  // Codec 3: the decoding tables of each ECSQ stream's level, built once.
  // Format 4 adds the high class's level and the classes of the compressed tokens.
  EcsqDecodeLevel ecsq[2], ecsq_high[2];
  for (int s = 0; s < 2; ++s)
    if (h.streams[s].ecsq()) {
      const EcsqModel& model = s == 0 ? cal.key.ecsq : cal.value.ecsq;
      KVTC_ASSIGN_OR_RETURN(ecsq[s], EcsqDecodeLevel::build(model, h.streams[s].ecsq_level));
      if (h.streams[s].token_classes()) {
        KVTC_ASSIGN_OR_RETURN(ecsq_high[s], EcsqDecodeLevel::build(model, h.streams[s].ecsq_level_high));
      }
    }
  KVTC_ASSIGN_OR_RETURN(const std::vector<uint8_t> classes, read_token_classes(h, payload, opt.verify_checksums));

  // Side chunks first (codes need the scales of their block), grouped by (stream, token block).
  std::map<std::pair<int, uint32_t>, BlockSymbols> blocks;
  std::vector<size_t> side_idx, codes_idx, exact_idx;
  for (size_t i = 0; i < h.chunks.size(); ++i) {
    const ChunkEntry& c = h.chunks[i];
    if (c.kind == ChunkKind::kClasses) continue;  // read above
    (c.kind == ChunkKind::kSide ? side_idx : c.kind == ChunkKind::kCodes ? codes_idx : exact_idx).push_back(i);
    if (c.kind != ChunkKind::kExact) blocks[{c.stream, c.token_begin}].n_tokens = c.n_tokens;
  }
  std::mutex time_mu;
  auto add_times = [&](double inflate_s, double quant_s) {
    std::lock_guard<std::mutex> lock(time_mu);
    times.deflate_s += inflate_s;
    times.quantize_s += quant_s;
  };
  KVTC_RETURN_IF_ERROR(parallel_for(int64_t(side_idx.size()), opt.n_threads, [&](int64_t ii) -> Status {
    const size_t i = side_idx[size_t(ii)];
    const ChunkEntry& c = h.chunks[i];
    std::vector<uint8_t> raw;
    auto d0 = Clock::now();
    KVTC_RETURN_IF_ERROR(inflate_chunk(payload, c, opt.verify_checksums, raw).with_context("chunk " + std::to_string(i)));
    auto q0 = Clock::now();
    BlockSymbols& b = blocks.at({c.stream, c.token_begin});  // distinct per side chunk: no race
    KVTC_RETURN_IF_ERROR(unpack_side(h.streams[c.stream], raw.data(), raw.size(), b).with_context("chunk " + std::to_string(i)));
    add_times(std::chrono::duration<double>(q0 - d0).count(), seconds_since(q0));
    return Status::ok();
  }));
  KVTC_RETURN_IF_ERROR(parallel_for(int64_t(codes_idx.size()), opt.n_threads, [&](int64_t ii) -> Status {
    const size_t i = codes_idx[size_t(ii)];
    const ChunkEntry& c = h.chunks[i];
    const StreamAllocation& a = h.streams[c.stream];
    if (c.coder == ChunkCoder::kEcsqRans) {
      auto d0 = Clock::now();
      const uint8_t* stored = payload + c.offset;
      if (opt.verify_checksums && crc32_of(stored, c.stored_bytes) != c.crc32)
        return checksum_mismatch("chunk " + std::to_string(i) + ": chunk checksum mismatch");
      const int64_t k = a.n_kept();
      const bool by_class = a.token_classes();
      KVTC_RETURN_IF_ERROR(decode_ecsq_chunk(ecsq[c.stream], stored, c.stored_bytes, c.raw_bytes, c.n_tokens, c.item_begin,
                                             c.item_begin + c.n_items,
                                             dec.coef[c.stream].data() + (int64_t(c.token_begin) - t0) * k, k,
                                             by_class ? &ecsq_high[c.stream] : nullptr,
                                             by_class ? classes.data() + (int64_t(c.token_begin) - t0) : nullptr)
                               .with_context("chunk " + std::to_string(i)));
      add_times(seconds_since(d0), 0.0);
      return Status::ok();
    }
    std::vector<uint8_t> raw;
    auto d0 = Clock::now();
    KVTC_RETURN_IF_ERROR(inflate_chunk(payload, c, opt.verify_checksums, raw).with_context("chunk " + std::to_string(i)));
    auto q0 = Clock::now();
    // Each codes chunk unpacks into its own symbol buffer and reads its block's side info in place.
    const BlockSymbols& side = blocks.at({c.stream, c.token_begin});
    BlockSymbols b;
    b.n_tokens = c.n_tokens;
    KVTC_RETURN_IF_ERROR(unpack_codes(a, raw.data(), raw.size(), c.item_begin, c.item_begin + c.n_items, c.layout, b)
                             .with_context("chunk " + std::to_string(i)));
    const int64_t k = a.n_kept();
    dequantize_block(a, b, side, c.item_begin, c.item_begin + c.n_items,
                     dec.coef[c.stream].data() + (int64_t(c.token_begin) - t0) * k, k);
    add_times(std::chrono::duration<double>(q0 - d0).count(), seconds_since(q0));
    return Status::ok();
  }));
  auto e0 = Clock::now();
  // Each segment's [H][n][D] block is allocated first; its chunks (several in version 2) fill token ranges.
  const int H = h.shape.n_kv_heads, D = h.shape.head_dim;
  const int64_t seg_tokens[2] = {h.n_head_exact, h.n_tail_exact};
  const int64_t seg_begin[2] = {0, int64_t(h.n_tokens) - h.n_tail_exact};
  for (int s = 0; s < 2; ++s)
    for (int seg = 0; seg < 2; ++seg)
      dec.exact[s][seg].assign(size_t(h.shape.n_layers), std::vector<float>(size_t(H * seg_tokens[seg] * D)));
  KVTC_RETURN_IF_ERROR(parallel_for(int64_t(exact_idx.size()), opt.n_threads, [&](int64_t ii) -> Status {
    const size_t i = exact_idx[size_t(ii)];
    const ChunkEntry& c = h.chunks[i];
    std::vector<uint8_t> raw;
    KVTC_RETURN_IF_ERROR(inflate_chunk(payload, c, opt.verify_checksums, raw).with_context("chunk " + std::to_string(i)));
    const int eb = dtype_size_bytes(h.dtype);
    const int64_t count = int64_t(raw.size()) / eb;
    std::vector<uint8_t> elems(raw.size());
    from_byte_planes(raw.data(), count, eb, elems.data());
    std::vector<float> values(static_cast<size_t>(count));
    for (int64_t e = 0; e < count; ++e) {
      if (h.dtype == DType::kF32) {
        std::memcpy(&values[e], &elems[e * 4], 4);
      } else {
        uint16_t bits;
        std::memcpy(&bits, &elems[e * 2], 2);
        values[e] = h.dtype == DType::kBF16 ? bf16_to_f32(bits) : f16_to_f32(bits);
      }
    }
    const int seg = c.token_begin < h.n_head_exact ? 0 : 1;
    std::vector<float>& dst = dec.exact[c.stream][seg][c.item_begin];
    const int64_t n = c.n_tokens, rel = int64_t(c.token_begin) - seg_begin[seg];
    for (int hh = 0; hh < H; ++hh)
      std::memcpy(dst.data() + (hh * seg_tokens[seg] + rel) * D, values.data() + hh * n * D, sizeof(float) * n * D);
    return Status::ok();
  }));
  times.exact_s += seconds_since(e0);
  times.total_s = seconds_since(start);
  if (times_out) *times_out = times;
  return dec;
}

Status CpuBackend::restore_layer(const CalibrationData& cal, const DecodedCoefficients& dec, int layer, float* k_out,
                                 float* v_out, int n_threads, StageTimes* times) const {
  (void)n_threads;  // the GEMM uses OpenBLAS's own threads
  const ContainerHeader& h = dec.container.header;
  if (layer < 0 || layer >= h.shape.n_layers) return invalid_argument("layer " + std::to_string(layer) + " out of range");
  const int H = h.shape.n_kv_heads, D = h.shape.head_dim;
  const int64_t T = int64_t(h.n_tokens), t0 = h.n_head_exact, m = int64_t(h.n_compressed_tokens());
  const int64_t p = h.shape.n_features(), width = int64_t(H) * D, col0 = int64_t(layer) * width;
  RopeTable rope(h.shape.rope, D, h.position_offset + t0, std::max<int64_t>(m, 1));
  std::vector<float> x(static_cast<size_t>(m * width));
  for (int s = 0; s < 2; ++s) {
    float* out = s == 0 ? k_out : v_out;
    const PcaBasis& pca = s == 0 ? cal.key.pca : cal.value.pca;
    const int64_t kept = h.streams[s].n_kept();
    auto g0 = Clock::now();
    for (int64_t t = 0; t < m; ++t) std::memcpy(x.data() + t * width, pca.mean.data() + col0, sizeof(float) * width);
    if (times) times->gather_s += seconds_since(g0);
    auto p0 = Clock::now();
    if (m > 0 && kept > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(m), int(width), int(kept), 1.0f, dec.coef[s].data(),
                  int(kept), pca.components.data() + col0, int(p), 1.0f, x.data(), int(width));
    if (times) times->transform_s += seconds_since(p0);
    g0 = Clock::now();
    for (int hh = 0; hh < H; ++hh) {
      float* dst = out + int64_t(hh) * T * D;
      for (int64_t t = 0; t < m; ++t) std::memcpy(dst + (t0 + t) * D, x.data() + t * width + int64_t(hh) * D, sizeof(float) * D);
      if (s == 0 && m > 0) rope.apply(dst + t0 * D, 0, m, /*inverse=*/false);
      // Exact tokens: head segment at [0, n_head), tail at [T - n_tail, T).
      const auto& head = dec.exact[s][0][layer];
      const auto& tail = dec.exact[s][1][layer];
      if (h.n_head_exact > 0)
        std::memcpy(dst, head.data() + int64_t(hh) * h.n_head_exact * D, sizeof(float) * h.n_head_exact * D);
      if (h.n_tail_exact > 0)
        std::memcpy(dst + (T - h.n_tail_exact) * D, tail.data() + int64_t(hh) * h.n_tail_exact * D,
                    sizeof(float) * h.n_tail_exact * D);
    }
    if (times) times->gather_s += seconds_since(g0);
  }
  return Status::ok();
}

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace kvtc
