#include "core/plan.hpp"

#include <algorithm>
#include <cmath>

#include "core/backend.hpp"
#include "core/chunk_codec.hpp"
#include "util/status_macros.hpp"

namespace kvtc {

Status check_encode_options(const EncodeOptions& o) {
  if (!(o.target_ratio >= 1.0) || !std::isfinite(o.target_ratio)) return invalid_argument("target ratio must be >= 1");
  if (o.deflate_level < 1 || o.deflate_level > 12) return invalid_argument("deflate level must be 1..12");
  if (o.chunk_tokens < 1 || o.chunk_tokens > 65536) return invalid_argument("chunk tokens must be 1..65536");
  if (o.exact_head_tokens < -1 || o.exact_tail_tokens < -1)
    return invalid_argument("exact head and tail tokens must be >= 0, or -1 for the calibration's");
  if (o.chunk_max_bytes < 256 || o.chunk_max_bytes > (int64_t(1) << 26))
    return invalid_argument("chunk max bytes must be 256..64 MiB");
  if (o.codec != 2 && o.codec != 3) return invalid_argument("codec must be 2 or 3");
  if (o.rans_lanes < 1 || o.rans_lanes > 64) return invalid_argument("rANS lanes must be 1..64");
  if (!o.token_importance.empty()) {
    if (o.codec != 3) return invalid_argument("token importance (token-adaptive rate) needs codec 3");
    if (!(o.high_rate_fraction > 0 && o.high_rate_fraction < 1)) return invalid_argument("high rate fraction must be in (0, 1)");
    if (o.high_rate_levels < 1 || o.high_rate_levels > 256) return invalid_argument("high rate levels must be 1..256");
  }
  return Status::ok();
}

namespace {

Status add_chunk(ContainerHeader& h, ChunkEntry e) {
  KVTC_ASSIGN_OR_RETURN(uint64_t raw, expected_chunk_raw_bytes(h, e));
  if (raw > kMaxChunkRawBytes) return invalid_argument("a chunk would exceed 256 MiB raw; lower chunk_tokens");
  e.raw_bytes = uint32_t(raw);
  h.chunks.push_back(e);
  return Status::ok();
}

}  // namespace

Result<ContainerPlan> plan_container(const CalibrationData& cal, const ModelShape& shape, DType dtype, int64_t n_tokens,
                                     int64_t position_offset, const std::map<std::string, std::string>& metadata,
                                     const EncodeOptions& opt) {
  KVTC_RETURN_IF_ERROR(check_encode_options(opt));
  if (!(shape == cal.shape))
    return mismatch("cache is " + shape.to_string() + " but the calibration is for " + cal.shape.to_string());
  ContainerPlan plan;
  ContainerHeader& h = plan.header;
  h.shape = shape;
  h.dtype = dtype;
  h.position_offset = position_offset;
  h.n_tokens = uint64_t(n_tokens);
  const ExactTokens exact = exact_tokens(cal, n_tokens, opt);
  h.n_head_exact = uint32_t(exact.head);
  h.n_tail_exact = uint32_t(exact.tail);
  h.calibration_fingerprint = cal.fingerprint;
  h.target_ratio = opt.target_ratio;
  h.metadata = metadata;
  plan.t0 = h.n_head_exact;
  plan.m = int64_t(h.n_compressed_tokens());
  const int64_t t0 = plan.t0, m = plan.m, T = n_tokens;

  for (int s = 0; s < 2; ++s) {
    StreamAllocation& a = h.streams[s];
    a.basis_rank = uint32_t((s == 0 ? cal.key : cal.value).pca.rank);
    if (opt.codec == 3) continue;  // the executor's rate control sets the allocation and the codes chunks
    KVTC_ASSIGN_OR_RETURN(Allocation alloc, allocation_for_ratio(cal, s, opt.target_ratio));
    a.groups = alloc.groups;
    if (m == 0 || a.n_kept() == 0) continue;
    bool has_side = false;
    for (const Group& g : a.groups) has_side |= side_bits_per_token(g.kind) > 0;
    const int64_t block = block_tokens(a, opt.chunk_tokens, opt.chunk_max_bytes);
    for (int64_t b0 = 0; b0 < m; b0 += block) {
      const int64_t n = std::min(block, m - b0);
      ChunkEntry base;
      base.stream = uint8_t(s);
      base.token_begin = uint32_t(t0 + b0);
      base.n_tokens = uint32_t(n);
      if (has_side) {
        ChunkEntry e = base;
        e.kind = ChunkKind::kSide;
        KVTC_RETURN_IF_ERROR(add_chunk(h, e));
      }
      for (const auto& [c0, c1] : split_components(a, uint64_t(n), uint64_t(opt.chunk_max_bytes))) {
        ChunkEntry e = base;
        e.kind = ChunkKind::kCodes;
        e.item_begin = c0;
        e.n_items = c1 - c0;
        KVTC_RETURN_IF_ERROR(add_chunk(h, e));
      }
    }
  }
  plan.n_coef_chunks = h.chunks.size();

  const int64_t token_bytes = int64_t(shape.n_kv_heads) * shape.head_dim * dtype_size_bytes(dtype);
  const int64_t exact_chunk_tokens = std::max<int64_t>(1, opt.chunk_max_bytes / token_bytes);
  for (int s = 0; s < 2; ++s)
    for (int l = 0; l < shape.n_layers; ++l)
      for (int seg = 0; seg < 2; ++seg) {
        const int64_t begin = seg == 0 ? 0 : T - h.n_tail_exact, n_seg = seg == 0 ? h.n_head_exact : h.n_tail_exact;
        for (int64_t t = begin; t < begin + n_seg; t += exact_chunk_tokens) {
          ChunkEntry e;
          e.kind = ChunkKind::kExact;
          e.stream = uint8_t(s);
          e.token_begin = uint32_t(t);
          e.n_tokens = uint32_t(std::min(exact_chunk_tokens, begin + n_seg - t));
          e.item_begin = uint32_t(l);
          e.n_items = 1;
          KVTC_RETURN_IF_ERROR(add_chunk(h, e));
        }
      }
  return plan;
}

}  // namespace kvtc
