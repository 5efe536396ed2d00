#include "cuda/gpu_encoder.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "core/chunk_codec.hpp"
#include "core/plan.hpp"
#include "cuda/cublas_common.hpp"
#include "cuda/deflate_encode.cuh"
#include "cuda/encode_kernels.cuh"
#include "cuda/restore_kernels.cuh"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t align16(uint64_t x) { return (x + 15) & ~uint64_t(15); }

// Device time per stage: pairs of CUDA events, summed after the final synchronisation.
class StageClock {
 public:
  enum Stage { kUpload, kGather, kGemm, kQuantize, kPack, kDeflate, kD2h, kStages };
  StageClock() = default;
  StageClock(const StageClock&) = delete;
  StageClock& operator=(const StageClock&) = delete;
  ~StageClock() {
    for (const Span& s : spans_) {
      if (s.begin) cudaEventDestroy(s.begin);
      if (s.end) cudaEventDestroy(s.end);
    }
  }
  Status begin(Stage stage, cudaStream_t stream) {
    spans_.push_back({stage, nullptr, nullptr});
    KVTC_CUDA_RETURN(cudaEventCreate(&spans_.back().begin));
    KVTC_CUDA_RETURN(cudaEventCreate(&spans_.back().end));
    KVTC_CUDA_RETURN(cudaEventRecord(spans_.back().begin, stream));
    return Status::ok();
  }
  Status end(cudaStream_t stream) {
    KVTC_CUDA_RETURN(cudaEventRecord(spans_.back().end, stream));
    return Status::ok();
  }
  double seconds(Stage stage) const {  // after a synchronisation
    double total = 0;
    for (const Span& s : spans_) {
      float ms = 0;
      if (s.stage == stage && cudaEventElapsedTime(&ms, s.begin, s.end) == cudaSuccess) total += ms * 1e-3;
    }
    return total;
  }

 private:
  struct Span {
    Stage stage;
    cudaEvent_t begin, end;
  };
  std::vector<Span> spans_;
};

PackJob make_pack_job(const ChunkPlan& c, uint8_t* dst, const DeviceBuffer* sym, const DeviceBuffer* side,
                      const DeviceBuffer* cache, const KVCache& kv, int64_t m) {
  PackJob j;
  j.dst = dst;
  j.kind = c.pack_kind;
  j.raw_bytes = c.pack_kind == kPackDense ? c.dense_bytes : c.entry.raw_bytes;
  j.n_tokens = c.entry.n_tokens;
  j.ld = uint64_t(m);
  j.col0 = c.col0;
  j.n_rows = c.n_rows;
  j.span_begin = c.span_begin;
  j.span_end = c.span_end;
  if (c.pack_kind == kPackSide) j.sym = side[c.stream].as<uint16_t>();
  if (c.pack_kind == kPackAligned || c.pack_kind == kPackDense) j.sym = sym[c.stream].as<uint16_t>();
  if (c.pack_kind == kPackExact) {
    j.cache = cache[c.stream].as<float>();
    j.cache_tokens = uint64_t(kv.n_tokens);
    j.token0 = c.entry.token_begin;
    j.layer = c.entry.item_begin;
    j.n_heads = uint32_t(kv.shape.n_kv_heads);
    j.head_dim = uint32_t(kv.shape.head_dim);
    j.dtype = uint32_t(kv.dtype);
  }
  return j;
}

// DEFLATE of `chunks[idx[i]]` (raw at raw_base + raw offset) into stored_base; results: bytes, crc,
// status, three arrays of n.
Status deflate_chunks(std::vector<ChunkPlan>& chunks, const std::vector<size_t>& idx, bool dense, uint8_t* raw_base,
                      uint8_t* stored_base, DeviceBuffer& jobs_buf, DeviceBuffer& results_buf, cudaStream_t stream,
                      std::vector<DeflateEncodeJob>* jobs) {
  jobs->clear();
  for (size_t i : idx) {
    const ChunkPlan& c = chunks[i];
    DeflateEncodeJob j;
    j.src = raw_base + c.raw_off;
    j.dst = stored_base + c.stored_off;
    j.src_bytes = dense ? c.dense_bytes : c.entry.raw_bytes;
    j.dst_capacity = uint32_t(deflate_encode_bound(j.src_bytes));
    jobs->push_back(j);
  }
  KVTC_RETURN_IF_ERROR(upload_vector(jobs_buf, *jobs, stream));
  KVTC_RETURN_IF_ERROR(results_buf.reserve(3 * sizeof(uint32_t) * std::max<size_t>(idx.size(), 1)));
  return Status::ok();
}

}  // namespace

GpuEncoder::~GpuEncoder() {
  if (handle_) cublasDestroy(handle_);
}

Status GpuEncoder::ensure_handle() {
  if (handle_) return Status::ok();
  KVTC_RETURN_IF_ERROR(cublas_status(cublasCreate(&handle_), "cublasCreate"));
  // Plain fp32 (no TF32): coefficients within fp32 rounding of the CPU's.
  return cublas_status(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Status check_gpu_encode_options(const EncodeOptions& o) {
  // Every encoder's checks (core/plan.hpp), then what this backend does not do.
  KVTC_RETURN_IF_ERROR(kvtc::check_encode_options(o));
  if (o.codec != 2)
    return unsupported("the CUDA backend encodes codec 2 only; codec " + std::to_string(o.codec) + " encodes on the CPU");
  return Status::ok();
}

Status check_encode_shape(const CalibrationData& cal, const ModelShape& shape, int64_t n_tokens) {
  if (!(shape == cal.shape))
    return mismatch("cache is " + shape.to_string() + " but the calibration is for " + cal.shape.to_string());
  if (shape.n_features() > INT_MAX || n_tokens > INT_MAX)
    return invalid_argument("cache too large for the GPU encoder's GEMM (features and tokens must fit 32-bit sizes)");
  return Status::ok();
}

Status plan_encode(const CalibrationData& cal, const int64_t device_rows[2], const ModelShape& shape, DType dtype,
                   int64_t n_tokens, int64_t position_offset, const std::map<std::string, std::string>& metadata,
                   const EncodeOptions& opt, EncodePlan* plan) {
  *plan = EncodePlan{};
  EncodePlan& P = *plan;
  KVTC_RETURN_IF_ERROR(check_gpu_encode_options(opt));
  // The container every encoder writes (core/plan.hpp); this adds what the kernels need per chunk.
  KVTC_ASSIGN_OR_RETURN(ContainerPlan cp, plan_container(cal, shape, dtype, n_tokens, position_offset, metadata, opt));
  P.header = std::move(cp.header);
  ContainerHeader& h = P.header;
  std::vector<ChunkEntry> entries = std::move(h.chunks);
  h.chunks.clear();
  P.t0 = cp.t0;
  P.m = cp.m;
  const int64_t m = P.m;

  std::vector<ChunkPlan>& chunks = P.chunks;
  std::vector<CodesSpan>& spans = P.spans;
  std::vector<QuantGroup>* qgroups = P.qgroups;
  int64_t* k = P.k;
  uint32_t* side_rows = P.side_rows;
  for (int s = 0; s < 2; ++s) {
    const StreamAllocation& a = h.streams[s];
    k[s] = a.n_kept();
    if (k[s] > device_rows[s])
      return invalid_argument("the allocation keeps " + std::to_string(k[s]) + " components, the device basis has " +
                              std::to_string(device_rows[s]) + " rows");
    for (const Group& g : a.groups) {
      if (g.kind == GroupKind::kDropped) continue;
      qgroups[s].push_back({g.first_component, g.n_components, uint32_t(g.kind), g.width_bits, side_rows[s]});
      side_rows[s] += uint32_t(side_bits_per_token(g.kind) / 16);
    }
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    const ChunkEntry& e = entries[i];
    ChunkPlan c;
    c.entry = e;
    c.stream = e.stream;
    if (e.kind == ChunkKind::kExact) {
      c.pack_kind = kPackExact;
    } else {
      c.col0 = uint64_t(int64_t(e.token_begin) - P.t0);
      if (e.kind == ChunkKind::kSide) {
        c.pack_kind = kPackSide;
        c.n_rows = side_rows[e.stream];
      } else {
        const StreamAllocation& a = h.streams[e.stream];
        const uint32_t c0 = e.item_begin, c1 = e.item_begin + e.n_items;
        c.pack_kind = kPackAligned;
        uint64_t bytes = 0, bits = 0;
        const Group* gs = a.groups.data();
        const uint32_t n_spans = codes_spans(gs, a.groups.size(), c0, c1, uint64_t(e.n_tokens), nullptr, &bytes, &bits);
        c.span_begin = uint32_t(spans.size());
        spans.resize(spans.size() + n_spans);
        codes_spans(gs, a.groups.size(), c0, c1, uint64_t(e.n_tokens), spans.data() + c.span_begin, &bytes, &bits);
        c.span_end = uint32_t(spans.size());
        if (bytes != e.raw_bytes || (bits + 7) / 8 != codes_raw_bytes(a, uint64_t(e.n_tokens), c0, c1, CodesLayout::kDense))
          return Status(StatusCode::kInternal, "codes chunk layout disagrees with codes_raw_bytes");
        c.dense_bytes = uint32_t(codes_raw_bytes(a, uint64_t(e.n_tokens), c0, c1, CodesLayout::kDense));
      }
    }
    chunks.push_back(c);
  }
  P.n_coef_chunks = cp.n_coef_chunks;
  for (ChunkPlan& c : chunks) {
    c.raw_off = P.raw_total;
    P.raw_total += align16(c.entry.raw_bytes);
    c.stored_off = P.stored_total;
    P.stored_total += align16(deflate_encode_bound(c.entry.raw_bytes));
  }
  // The RoPE table is the device's (EncodePlan::rope_first_position): on the host its double-precision
  // sin and cos cost about 20 ms per 8K tokens of a 128-wide head, more than the rest of the plan.
  P.rope_first_position = position_offset + P.t0;

  return Status::ok();
}

Status GpuEncoder::check_inputs(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& o) {
  KVTC_RETURN_IF_ERROR(check_gpu_encode_options(o));
  KVTC_RETURN_IF_ERROR(cache.validate());
  return check_encode_shape(cal, cache.shape, cache.n_tokens);
}

Status GpuEncoder::encode(const GpuCalibration& gcal, const CalibrationData& cal, const KVCache& cache,
                          const EncodeOptions& opt, cudaStream_t stream, EncodedCache* out, CudaEncodeProbe* pr) {
  const auto start = Clock::now();
  KVTC_RETURN_IF_ERROR(check_inputs(cal, cache, opt));
  if (gcal.fingerprint != cal.fingerprint || !gcal.has_f32 || !(gcal.shape == cal.shape))
    return invalid_argument("the device calibration is not this calibration's fp32 upload");
  CudaEncodeProbe local;
  CudaEncodeProbe& probe = pr ? *pr : local;
  probe.n_dense_chunks = 0;
  probe.raw.clear();
  for (auto& c : probe.coef) c.clear();
  KVTC_RETURN_IF_ERROR(ensure_handle());
  KVTC_RETURN_IF_ERROR(cublas_status(cublasSetMathMode(handle_, probe.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                                     "cublasSetMathMode"));

  // ---- Host: header, chunk plan, tables (shared with the batched encoder).
  EncodePlan plan;
  KVTC_RETURN_IF_ERROR(plan_encode(cal, gcal.rows, cache.shape, cache.dtype, cache.n_tokens, cache.position_offset,
                                   cache.metadata, opt, &plan));
  ContainerHeader& h = plan.header;
  const int64_t T = cache.n_tokens, t0 = plan.t0, m = plan.m;
  const int64_t p = cache.shape.n_features();
  const int L = cache.shape.n_layers, H = cache.shape.n_kv_heads, D = cache.shape.head_dim;
  std::vector<ChunkPlan>& chunks = plan.chunks;
  const std::vector<CodesSpan>& spans = plan.spans;
  const std::vector<QuantGroup>* qgroups = plan.qgroups;
  const int64_t* k = plan.k;
  const uint32_t* side_rows = plan.side_rows;
  const size_t n_coef_chunks = plan.n_coef_chunks;
  const uint64_t raw_total = plan.raw_total, stored_total = plan.stored_total;
  bool project[2] = {false, false};
  for (int s = 0; s < 2; ++s) {
    if (m == 0 || k[s] == 0) continue;
    if (!probe.coef_in[s].empty() && probe.coef_in[s].size() != size_t(k[s]) * size_t(m))
      return invalid_argument("replacement coefficients of stream " + std::to_string(s) + " must be [n_kept][M]");
    project[s] = probe.coef_in[s].empty();
  }

  // ---- Buffers (contents are not kept on growth), then job tables with device pointers.
  const size_t layer_elems = size_t(H) * size_t(T) * size_t(D);
  const int64_t slab = std::max<int64_t>(1, std::min<int64_t>(m, (int64_t(1) << 27) / std::max<int64_t>(p, 1)));
  for (int s = 0; s < 2; ++s) {
    if (T > 0) KVTC_RETURN_IF_ERROR(cache_[s].reserve(size_t(L) * layer_elems * sizeof(float)));
    if (m > 0 && k[s] > 0) {
      KVTC_RETURN_IF_ERROR(coef_[s].reserve(size_t(k[s]) * size_t(m) * sizeof(float)));
      KVTC_RETURN_IF_ERROR(sym_[s].reserve(size_t(k[s]) * size_t(m) * 2));
      KVTC_RETURN_IF_ERROR(side_[s].reserve(size_t(std::max<uint32_t>(side_rows[s], 1)) * size_t(m) * 2));
    }
  }
  if (project[0] || project[1]) KVTC_RETURN_IF_ERROR(x_.reserve(size_t(slab) * size_t(p) * sizeof(float)));
  KVTC_RETURN_IF_ERROR(raw_.reserve(raw_total));
  KVTC_RETURN_IF_ERROR(stored_.reserve(stored_total));
  std::vector<PackJob> pack_jobs;
  pack_jobs.reserve(chunks.size());
  for (ChunkPlan& c : chunks) {
    c.raw_dev = raw_.as<uint8_t>() + c.raw_off;
    pack_jobs.push_back(make_pack_job(c, raw_.as<uint8_t>() + c.raw_off, sym_, side_, cache_, cache, m));
  }
  std::vector<size_t> all(chunks.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<DeflateEncodeJob> djobs;
  probe.host_s = seconds_since(start);

  // ---- Device work. Every upload first: a pageable copy queued behind a kernel would hold the host.
  StageClock clock;
  KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kUpload, stream));
  for (int s = 0; s < 2 && T > 0; ++s)
    for (int l = 0; l < L; ++l) {
      const std::vector<float>& src = s == 0 ? cache.k[size_t(l)] : cache.v[size_t(l)];
      KVTC_CUDA_RETURN(cudaMemcpyAsync(cache_[s].as<float>() + size_t(l) * layer_elems, src.data(),
                                       layer_elems * sizeof(float), cudaMemcpyHostToDevice, stream));
    }
  for (int s = 0; s < 2; ++s) {
    KVTC_RETURN_IF_ERROR(upload_vector(groups_[s], qgroups[s], stream));
    if (m > 0 && k[s] > 0 && !project[s]) KVTC_RETURN_IF_ERROR(upload_vector(coef_[s], probe.coef_in[s], stream));
  }
  KVTC_RETURN_IF_ERROR(upload_vector(spans_, spans, stream));
  KVTC_RETURN_IF_ERROR(upload_vector(pack_jobs_, pack_jobs, stream));
  KVTC_RETURN_IF_ERROR(deflate_chunks(chunks, all, false, raw_.as<uint8_t>(), stored_.as<uint8_t>(), deflate_jobs_,
                                      results_, stream, &djobs));
  KVTC_RETURN_IF_ERROR(clock.end(stream));

  if (plan.needs_rope()) {  // after every upload (see above)
    KVTC_RETURN_IF_ERROR(rope_.reserve(size_t(m) * size_t(D / 2) * sizeof(float2)));
    KVTC_CUDA_RETURN(launch_rope_table(gcal.inv_freq.as<double>(), D / 2, plan.rope_first_position, m,
                                       rope_.as<float2>(), stream));
  }
  KVTC_RETURN_IF_ERROR(cublas_status(cublasSetStream(handle_, stream), "cublasSetStream"));
  const float one = 1.0f, zero = 0.0f;
  for (int s = 0; s < 2; ++s) {
    if (m == 0 || k[s] == 0) continue;
    for (int64_t b0 = 0; project[s] && b0 < m; b0 += slab) {
      const int64_t n = std::min(slab, m - b0);
      GatherParams g;
      g.cache = cache_[s].as<float>();
      g.rope = s == 0 ? rope_.as<float2>() + size_t(b0) * (D / 2) : nullptr;
      g.mean = gcal.mean[s].as<float>();
      g.x = x_.as<float>();
      g.cache_tokens = T;
      g.token0 = t0 + b0;
      g.n = n;
      g.n_lh = L * H;
      g.head_dim = D;
      g.rope_style = int(cache.shape.rope.style);
      KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kGather, stream));
      KVTC_CUDA_RETURN(launch_gather(g, stream));
      KVTC_RETURN_IF_ERROR(clock.end(stream));
      // coef (column-major m x k, ld m) rows b0.. = X^T (p x n, ld p)^T * basis (p x k, ld p).
      KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kGemm, stream));
      KVTC_RETURN_IF_ERROR(cublas_status(
          cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(k[s]), int(p), &one, x_.as<float>(), int(p),
                      gcal.basis_f32[s].as<float>(), int(p), &zero, coef_[s].as<float>() + b0, int(m)),
          "cublasSgemm"));
      KVTC_RETURN_IF_ERROR(clock.end(stream));
    }
    KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kQuantize, stream));
    KVTC_CUDA_RETURN(launch_quantize(coef_[s].as<float>(), m, groups_[s].as<QuantGroup>(), int(qgroups[s].size()),
                                     sym_[s].as<uint16_t>(), side_[s].as<uint16_t>(), stream));
    KVTC_RETURN_IF_ERROR(clock.end(stream));
  }
  KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kPack, stream));
  KVTC_CUDA_RETURN(launch_pack(pack_jobs_.as<PackJob>(), int(pack_jobs.size()), spans_.as<CodesSpan>(), stream));
  KVTC_RETURN_IF_ERROR(clock.end(stream));
  const size_t n_chunks = chunks.size();
  uint32_t* res = results_.as<uint32_t>();
  KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kDeflate, stream));
  if (n_chunks > 0)
    KVTC_CUDA_RETURN(launch_deflate_encode(deflate_jobs_.as<DeflateEncodeJob>(), int(n_chunks), res, res + n_chunks,
                                           res + 2 * n_chunks, stream));
  KVTC_RETURN_IF_ERROR(clock.end(stream));
  // Synchronisation 1: sizes, CRCs, statuses.
  std::vector<uint32_t> r(3 * n_chunks);
  if (n_chunks > 0)
    KVTC_CUDA_RETURN(cudaMemcpyAsync(r.data(), res, r.size() * sizeof(uint32_t), cudaMemcpyDeviceToHost, stream));
  KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));
  std::vector<size_t> retry;
  for (size_t i = 0; i < n_chunks; ++i) {
    if (r[2 * n_chunks + i] != kEncodeOk)
      return Status(StatusCode::kInternal, "GPU DEFLATE of chunk " + std::to_string(i) + " failed with status " +
                                               std::to_string(r[2 * n_chunks + i]));
    ChunkPlan& c = chunks[i];
    c.stored_bytes = r[i];
    c.crc32 = r[n_chunks + i];
    c.stored_dev = stored_.as<uint8_t>() + c.stored_off;
    // Dense never exceeds the nominal size: tried when aligned symbols did not compress below it.
    if (c.pack_kind == kPackAligned && c.stored_bytes > c.dense_bytes) retry.push_back(i);
  }

  // ---- Dense retries (the CPU encoder's rule: keep dense when its stream is strictly smaller).
  if (!retry.empty()) {
    std::vector<ChunkPlan> dense;
    uint64_t draw = 0, dstored = 0;
    for (size_t i : retry) {
      ChunkPlan c = chunks[i];
      c.pack_kind = kPackDense;
      c.raw_off = draw;
      draw += align16(c.dense_bytes);
      c.stored_off = dstored;
      dstored += align16(deflate_encode_bound(c.dense_bytes));
      dense.push_back(c);
    }
    KVTC_RETURN_IF_ERROR(dense_raw_.reserve(draw));
    KVTC_RETURN_IF_ERROR(dense_stored_.reserve(dstored));
    std::vector<PackJob> jobs;
    for (const ChunkPlan& c : dense)
      jobs.push_back(make_pack_job(c, dense_raw_.as<uint8_t>() + c.raw_off, sym_, side_, cache_, cache, m));
    std::vector<size_t> idx(dense.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    KVTC_RETURN_IF_ERROR(upload_vector(dense_pack_jobs_, jobs, stream));
    KVTC_RETURN_IF_ERROR(deflate_chunks(dense, idx, true, dense_raw_.as<uint8_t>(), dense_stored_.as<uint8_t>(),
                                        dense_deflate_jobs_, dense_results_, stream, &djobs));
    const size_t nd = dense.size();
    uint32_t* dres = dense_results_.as<uint32_t>();
    KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kPack, stream));
    KVTC_CUDA_RETURN(launch_pack(dense_pack_jobs_.as<PackJob>(), int(nd), spans_.as<CodesSpan>(), stream));
    KVTC_RETURN_IF_ERROR(clock.end(stream));
    KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kDeflate, stream));
    KVTC_CUDA_RETURN(launch_deflate_encode(dense_deflate_jobs_.as<DeflateEncodeJob>(), int(nd), dres, dres + nd,
                                           dres + 2 * nd, stream));
    KVTC_RETURN_IF_ERROR(clock.end(stream));
    std::vector<uint32_t> dr(3 * nd);
    KVTC_CUDA_RETURN(cudaMemcpyAsync(dr.data(), dres, dr.size() * sizeof(uint32_t), cudaMemcpyDeviceToHost, stream));
    KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));
    for (size_t d = 0; d < nd; ++d) {
      if (dr[2 * nd + d] != kEncodeOk)
        return Status(StatusCode::kInternal,
                      "GPU DEFLATE of a dense chunk failed with status " + std::to_string(dr[2 * nd + d]));
      ChunkPlan& c = chunks[retry[d]];
      if (dr[d] >= c.stored_bytes) continue;
      c.dense = true;
      c.stored_bytes = dr[d];
      c.crc32 = dr[nd + d];
      c.stored_dev = dense_stored_.as<uint8_t>() + dense[d].stored_off;
      c.raw_dev = dense_raw_.as<uint8_t>() + dense[d].raw_off;
      c.entry.layout = CodesLayout::kDense;
      c.entry.raw_bytes = c.dense_bytes;
      ++probe.n_dense_chunks;
    }
  }

  // ---- Header, then the stored chunks gathered back to back and copied to the host once.
  uint64_t offset = 0;
  int64_t coef_stored = 0;
  std::vector<CopyJob> copies;
  for (size_t i = 0; i < n_chunks; ++i) {
    ChunkPlan& c = chunks[i];
    c.entry.offset = offset;
    c.entry.stored_bytes = c.stored_bytes;
    c.entry.crc32 = c.crc32;
    h.chunks.push_back(c.entry);
    copies.push_back({c.stored_dev, nullptr, c.stored_bytes});
    offset += c.stored_bytes;
    if (i < n_coef_chunks) coef_stored += c.stored_bytes;
  }
  KVTC_RETURN_IF_ERROR(payload_.reserve(std::max<uint64_t>(offset, 1)));
  for (size_t i = 0; i < n_chunks; ++i) copies[i].dst = payload_.as<uint8_t>() + h.chunks[i].offset;
  out->bytes = serialize_container_header(h);
  const size_t header_bytes = out->bytes.size();
  out->bytes.resize(header_bytes + offset);
  KVTC_RETURN_IF_ERROR(upload_vector(copy_jobs_, copies, stream));
  KVTC_RETURN_IF_ERROR(clock.begin(StageClock::kD2h, stream));
  KVTC_CUDA_RETURN(launch_copy(copy_jobs_.as<CopyJob>(), int(copies.size()), stream));
  if (offset > 0)
    KVTC_CUDA_RETURN(
        cudaMemcpyAsync(out->bytes.data() + header_bytes, payload_.get(), offset, cudaMemcpyDeviceToHost, stream));
  KVTC_RETURN_IF_ERROR(clock.end(stream));
  if (probe.keep_outputs) {
    for (int s = 0; s < 2; ++s) {
      probe.coef[s].assign(size_t(k[s]) * size_t(m), 0.0f);
      if (!probe.coef[s].empty())
        KVTC_CUDA_RETURN(cudaMemcpyAsync(probe.coef[s].data(), coef_[s].get(), probe.coef[s].size() * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream));
    }
    probe.raw.assign(n_chunks, {});
    for (size_t i = 0; i < n_chunks; ++i) {
      probe.raw[i].resize(h.chunks[i].raw_bytes);
      if (!probe.raw[i].empty())
        KVTC_CUDA_RETURN(cudaMemcpyAsync(probe.raw[i].data(), chunks[i].raw_dev, probe.raw[i].size(),
                                         cudaMemcpyDeviceToHost, stream));
    }
  }
  KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));

  EncodeReport& rep = out->report;
  rep = EncodeReport{};
  rep.n_tokens = T;
  rep.n_compressed_tokens = m;
  rep.n_exact_tokens = T - m;
  rep.raw_bytes = T * p * 2 * 2;
  rep.file_bytes = int64_t(out->bytes.size());
  rep.compressed_payload_bytes = coef_stored;
  rep.nominal_payload_bytes = (h.streams[0].nominal_bits_per_token() + h.streams[1].nominal_bits_per_token()) * m / 8;
  const double raw_compressed = double(m) * double(p) * 4.0;
  rep.ratio_compressed_tokens = coef_stored > 0 ? raw_compressed / double(coef_stored) : 0.0;
  rep.ratio_nominal = rep.nominal_payload_bytes > 0 ? raw_compressed / double(rep.nominal_payload_bytes) : 0.0;
  rep.ratio_file = double(rep.raw_bytes) / double(rep.file_bytes);
  rep.deflate_gain = coef_stored > 0 ? double(rep.nominal_payload_bytes) / double(coef_stored) : 0.0;
  rep.bytes_per_token = T > 0 ? double(rep.file_bytes) / double(T) : 0.0;
  probe.upload_s = clock.seconds(StageClock::kUpload);
  probe.gather_s = clock.seconds(StageClock::kGather);
  probe.gemm_s = clock.seconds(StageClock::kGemm);
  probe.quantize_s = clock.seconds(StageClock::kQuantize);
  probe.pack_s = clock.seconds(StageClock::kPack);
  probe.deflate_s = clock.seconds(StageClock::kDeflate);
  probe.d2h_s = clock.seconds(StageClock::kD2h);
  probe.total_s = seconds_since(start);
  rep.seconds = probe.total_s;
  if (opt.progress) opt.progress(1.0, "compress");
  return Status::ok();
}

}  // namespace kvtc::cuda
