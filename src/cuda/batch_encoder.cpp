#include "cuda/batch_encoder.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cublas_common.hpp"
#include "cuda/container_assembly.cuh"
#include "cuda/deflate_encode.cuh"
#include "cuda/encode_kernels.cuh"
#include "cuda/restore_kernels.cuh"
#include "format/container.hpp"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

namespace {

uint64_t align16(uint64_t x) { return (x + 15) & ~uint64_t(15); }
size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

// One sequence: its plan, header template, bound and dense alternatives.
struct SeqPlan {
  EncodePlan plan;
  std::vector<uint8_t> header;        // template: offsets, stored sizes, CRCs 0; CRC not valid
  uint64_t bound = 0;                 // header + every chunk's DEFLATE bound
  std::vector<size_t> dense_chunks;   // codes chunks (their dense alternative)
  std::vector<uint64_t> dense_raw_off, dense_stored_off;
  uint64_t dense_raw_total = 0, dense_stored_total = 0;
  int64_t slab = 0;                   // tokens per gather + GEMM
};

Status check_view(const DeviceCacheView& v, const CalibrationData& cal, size_t i) {
  const std::string who = "sequence " + std::to_string(i) + ": ";
  if (dtype_size_bytes(v.dtype) == 0) return invalid_argument(who + "unknown dtype");
  if (v.n_tokens < 0 || v.position_offset < 0) return invalid_argument(who + "n_tokens and position_offset must be >= 0");
  KVTC_RETURN_IF_ERROR(check_encode_shape(cal, v.shape, v.n_tokens));
  const size_t L = size_t(v.shape.n_layers);
  if (!v.paged_layers.empty()) {
    if (!v.k_layers.empty() || !v.v_layers.empty())
      return invalid_argument(who + "give contiguous (k_layers, v_layers) or paged layers, not both");
    if (v.paged_layers.size() != L) return invalid_argument(who + "paged_layers must hold one pointer per layer");
    if (v.block_table_dev == nullptr || v.block_size < 1)
      return invalid_argument(who + "paged layers need a block table and block_size >= 1");
    for (const void* p : v.paged_layers)
      if (p == nullptr) return invalid_argument(who + "null layer pointer");
    return Status::ok();
  }
  if (v.k_layers.size() != L || v.v_layers.size() != L)
    return invalid_argument(who + "k_layers and v_layers must hold one pointer per layer");
  for (size_t l = 0; l < L; ++l)
    if (v.k_layers[l] == nullptr || v.v_layers[l] == nullptr) return invalid_argument(who + "null layer pointer");
  return Status::ok();
}

Status plan_all(const GpuCalibration& gcal, const CalibrationData& cal, const std::vector<DeviceCacheView>& views,
                const EncodeOptions& opt, std::vector<SeqPlan>* out) {
  KVTC_RETURN_IF_ERROR(check_gpu_encode_options(opt));
  if (views.empty()) return invalid_argument("no sequences to encode");
  if (gcal.fingerprint != cal.fingerprint || !gcal.has_f32 || !(gcal.shape == cal.shape))
    return invalid_argument("the device calibration has no fp32 bases (DeviceCalibration::Options::fp32)");
  out->assign(views.size(), SeqPlan{});
  for (size_t i = 0; i < views.size(); ++i) {
    const DeviceCacheView& v = views[i];
    KVTC_RETURN_IF_ERROR(check_view(v, cal, i));
    SeqPlan& sp = (*out)[i];
    KVTC_RETURN_IF_ERROR(plan_encode(cal, gcal.rows, v.shape, v.dtype, v.n_tokens, v.position_offset, v.metadata, opt,
                                     &sp.plan));
    ContainerHeader h = sp.plan.header;
    sp.bound = 0;
    for (size_t c = 0; c < sp.plan.chunks.size(); ++c) {
      const ChunkPlan& cp = sp.plan.chunks[c];
      h.chunks.push_back(cp.entry);  // offset, stored_bytes, crc32: 0
      sp.bound += deflate_encode_bound(cp.entry.raw_bytes);
      if (cp.pack_kind == kPackAligned) {
        sp.dense_chunks.push_back(c);
        sp.dense_raw_off.push_back(sp.dense_raw_total);
        sp.dense_raw_total += align16(cp.dense_bytes);
        sp.dense_stored_off.push_back(sp.dense_stored_total);
        sp.dense_stored_total += align16(deflate_encode_bound(cp.dense_bytes));
      }
    }
    sp.header = serialize_container_header(h);
    sp.bound += sp.header.size();
    const int64_t p = v.shape.n_features(), m = sp.plan.m;
    sp.slab = std::max<int64_t>(1, std::min<int64_t>(m, (int64_t(1) << 27) / std::max<int64_t>(p, 1)));
  }
  return Status::ok();
}

// Bump allocation in the workspace (base == nullptr: counting, placeholder addresses).
struct Carver {
  uint8_t* base = nullptr;
  size_t bytes = 0, used = 0;
  template <typename T>
  Status take(size_t n_bytes, T** out) {
    const size_t size = align256(std::max<size_t>(n_bytes, 1));
    if (base != nullptr && used + size > bytes)
      return Status(StatusCode::kOutOfMemory, "workspace of " + std::to_string(bytes) +
                                                  " bytes is too small (BatchEncoder::workspace_bytes gives what a batch needs)");
    *out = reinterpret_cast<T*>(base != nullptr ? base + used : reinterpret_cast<uint8_t*>(uintptr_t(256) + used));
    used += size;
    return Status::ok();
  }
  uint8_t* next() const { return base != nullptr ? base + used : reinterpret_cast<uint8_t*>(uintptr_t(256) + used); }
};

// Host-built tables, uploaded once; items 256-byte aligned.
struct Blob {
  std::vector<uint8_t> bytes;
  uint8_t* dev = nullptr;  // where it will lie
  template <typename T>
  T* put(const T* p, size_t n) {
    const size_t off = align256(bytes.size());
    bytes.resize(off + std::max<size_t>(n * sizeof(T), 1), 0);
    if (n > 0) std::memcpy(bytes.data() + off, p, n * sizeof(T));
    return reinterpret_cast<T*>(dev + off);
  }
  template <typename T>
  T* put(const std::vector<T>& v) { return put(v.data(), v.size()); }
};

struct SeqDev {
  uint8_t *raw = nullptr, *stored = nullptr, *dense_raw = nullptr, *dense_stored = nullptr;
  AssemblyCopy* copies = nullptr;
  float2* rope = nullptr;  // [m][head_dim / 2], written on the device (launch_rope_table)
  const QuantGroup* qgroups[2] = {nullptr, nullptr};
  const CodesSpan* spans = nullptr;
  const PackJob* pack = nullptr;
  int n_pack = 0;
  CacheSource src[2];
};

struct BatchDev {
  std::vector<SeqDev> seq;
  uint32_t *results = nullptr, *dense_results = nullptr, *statuses = nullptr;
  float *x = nullptr, *coef = nullptr;
  uint16_t *sym[2] = {nullptr, nullptr}, *side[2] = {nullptr, nullptr};
  const ExactPackJob* exact = nullptr;
  DeflateEncodeJob *deflate = nullptr, *dense_deflate = nullptr;
  const DenseGate* gates = nullptr;
  const AssemblyJob* assembly = nullptr;
  int n_exact = 0, n_chunks = 0, n_dense = 0;
  Blob blob;
};

// Carves every buffer of the batch and builds the table blob (the last carve). Counting when
// carver.base is null: the same sizes, placeholder addresses.
Status build_batch(const std::vector<SeqPlan>& plans, const std::vector<DeviceCacheView>& views, Carver& carver,
                   uint8_t* out_dev, const std::vector<uint64_t>& out_offsets, uint64_t* sizes_dev, BatchDev* B) {
  const size_t n = plans.size();
  B->seq.assign(n, SeqDev{});
  size_t n_chunks = 0, n_dense = 0, x_bytes = 0, coef_bytes = 0, sym_bytes[2] = {0, 0}, side_bytes[2] = {0, 0};
  for (size_t i = 0; i < n; ++i) {
    const SeqPlan& sp = plans[i];
    const EncodePlan& P = sp.plan;
    SeqDev& d = B->seq[i];
    KVTC_RETURN_IF_ERROR(carver.take(P.raw_total, &d.raw));
    KVTC_RETURN_IF_ERROR(carver.take(P.stored_total, &d.stored));
    KVTC_RETURN_IF_ERROR(carver.take(sp.dense_raw_total, &d.dense_raw));
    KVTC_RETURN_IF_ERROR(carver.take(sp.dense_stored_total, &d.dense_stored));
    KVTC_RETURN_IF_ERROR(carver.take(P.chunks.size() * sizeof(AssemblyCopy), &d.copies));
    if (P.needs_rope())
      KVTC_RETURN_IF_ERROR(carver.take(size_t(P.m) * size_t(views[i].shape.head_dim / 2) * sizeof(float2), &d.rope));
    n_chunks += P.chunks.size();
    n_dense += sp.dense_chunks.size();
    const size_t m = size_t(P.m), p = size_t(views[i].shape.n_features());
    if (m == 0) continue;
    if (P.k[0] > 0 || P.k[1] > 0) x_bytes = std::max(x_bytes, size_t(sp.slab) * p * sizeof(float));
    for (int s = 0; s < 2; ++s) {
      if (P.k[s] == 0) continue;
      coef_bytes = std::max(coef_bytes, size_t(P.k[s]) * m * sizeof(float));
      sym_bytes[s] = std::max(sym_bytes[s], size_t(P.k[s]) * m * 2);
      side_bytes[s] = std::max(side_bytes[s], size_t(P.side_rows[s]) * m * 2);
    }
  }
  KVTC_RETURN_IF_ERROR(carver.take(3 * n_chunks * sizeof(uint32_t), &B->results));
  KVTC_RETURN_IF_ERROR(carver.take(3 * n_dense * sizeof(uint32_t), &B->dense_results));
  KVTC_RETURN_IF_ERROR(carver.take(n * sizeof(uint32_t), &B->statuses));
  KVTC_RETURN_IF_ERROR(carver.take(x_bytes, &B->x));
  KVTC_RETURN_IF_ERROR(carver.take(coef_bytes, &B->coef));
  for (int s = 0; s < 2; ++s) {
    KVTC_RETURN_IF_ERROR(carver.take(sym_bytes[s], &B->sym[s]));
    KVTC_RETURN_IF_ERROR(carver.take(side_bytes[s], &B->side[s]));
  }
  B->n_chunks = int(n_chunks);
  B->n_dense = int(n_dense);

  // ---- The blob: tables first, then the jobs that point at them.
  Blob& blob = B->blob;
  blob.bytes.clear();
  blob.dev = carver.next();
  std::vector<const uint8_t*> headers(n);
  std::vector<AssemblyChunk> achunks;
  std::vector<ExactPackJob> exact;
  std::vector<DeflateEncodeJob> djobs, ddjobs;
  std::vector<DenseGate> gates;
  std::vector<uint32_t> first_job(n);
  for (size_t i = 0; i < n; ++i) {
    const SeqPlan& sp = plans[i];
    const EncodePlan& P = sp.plan;
    const DeviceCacheView& v = views[i];
    SeqDev& d = B->seq[i];
    headers[i] = blob.put(sp.header);
    for (int s = 0; s < 2; ++s) d.qgroups[s] = blob.put(P.qgroups[s]);
    d.spans = blob.put(P.spans);
    const bool paged = !v.paged_layers.empty();
    const void* const* layers[2];
    if (paged) {
      layers[0] = layers[1] = blob.put(v.paged_layers);
    } else {
      layers[0] = blob.put(v.k_layers);
      layers[1] = blob.put(v.v_layers);
    }
    for (int s = 0; s < 2; ++s) {
      CacheSource& c = d.src[s];
      c.layers = layers[s];
      c.block_table = paged ? v.block_table_dev : nullptr;
      c.block_size = paged ? v.block_size : 0;
      c.stream = s;
      c.n_heads = v.shape.n_kv_heads;
      c.head_dim = v.shape.head_dim;
      c.n_tokens = v.n_tokens;
      c.dtype = uint32_t(v.dtype);
    }
    std::vector<PackJob> pack;
    first_job[i] = uint32_t(djobs.size());
    size_t dense_k = 0;
    for (size_t ci = 0; ci < P.chunks.size(); ++ci) {
      const ChunkPlan& c = P.chunks[ci];
      DeflateEncodeJob j;
      j.src = d.raw + c.raw_off;
      j.dst = d.stored + c.stored_off;
      j.src_bytes = c.entry.raw_bytes;
      j.dst_capacity = uint32_t(deflate_encode_bound(c.entry.raw_bytes));
      djobs.push_back(j);
      AssemblyChunk a;
      a.stored = d.stored + c.stored_off;
      if (c.pack_kind == kPackExact) {
        ExactPackJob e;
        e.dst = d.raw + c.raw_off;
        e.src = d.src[c.stream];
        e.layer = c.entry.item_begin;
        e.token0 = c.entry.token_begin;
        e.n_tokens = c.entry.n_tokens;
        e.raw_bytes = c.entry.raw_bytes;
        exact.push_back(e);
      } else {
        PackJob pj;
        pj.dst = d.raw + c.raw_off;
        pj.kind = c.pack_kind;
        pj.raw_bytes = c.entry.raw_bytes;
        pj.n_tokens = c.entry.n_tokens;
        pj.ld = uint64_t(P.m);
        pj.col0 = c.col0;
        pj.n_rows = c.n_rows;
        pj.span_begin = c.span_begin;
        pj.span_end = c.span_end;
        pj.sym = c.pack_kind == kPackSide ? B->side[c.stream] : B->sym[c.stream];
        pack.push_back(pj);
        if (c.pack_kind == kPackAligned) {  // and its dense alternative
          pj.kind = kPackDense;
          pj.raw_bytes = c.dense_bytes;
          pj.dst = d.dense_raw + sp.dense_raw_off[dense_k];
          pack.push_back(pj);
          DeflateEncodeJob dj;
          dj.src = pj.dst;
          dj.dst = d.dense_stored + sp.dense_stored_off[dense_k];
          dj.src_bytes = c.dense_bytes;
          dj.dst_capacity = uint32_t(deflate_encode_bound(c.dense_bytes));
          a.dense_stored = dj.dst;
          a.dense_raw_bytes = c.dense_bytes;
          a.dense_index = uint32_t(ddjobs.size());
          gates.push_back({uint32_t(djobs.size() - 1), c.dense_bytes});
          ddjobs.push_back(dj);
          ++dense_k;
        }
      }
      achunks.push_back(a);
    }
    d.pack = blob.put(pack);
    d.n_pack = int(pack.size());
  }
  const AssemblyChunk* achunks_dev = blob.put(achunks);
  std::vector<AssemblyJob> ajobs(n);
  for (size_t i = 0; i < n; ++i) {
    AssemblyJob& a = ajobs[i];
    a.out = out_dev != nullptr ? out_dev + out_offsets[i] : nullptr;
    a.capacity = plans[i].bound;
    a.header = headers[i];
    a.header_size = plans[i].header.size();
    a.chunks = achunks_dev + first_job[i];
    a.n_chunks = uint32_t(plans[i].plan.chunks.size());
    a.first_job = first_job[i];
    a.copies = B->seq[i].copies;
    a.size_out = sizes_dev != nullptr ? sizes_dev + i : nullptr;
    a.status_out = B->statuses + i;
  }
  B->exact = blob.put(exact);
  B->n_exact = int(exact.size());
  B->deflate = blob.put(djobs);
  B->dense_deflate = blob.put(ddjobs);
  B->gates = blob.put(gates);
  B->assembly = blob.put(ajobs);
  uint8_t* blob_dev = nullptr;
  KVTC_RETURN_IF_ERROR(carver.take(blob.bytes.size(), &blob_dev));
  if (blob_dev != blob.dev) return Status(StatusCode::kInternal, "batch encoder: table blob misplaced");
  return Status::ok();
}

}  // namespace

GpuBatchEncoder::~GpuBatchEncoder() {
  if (done_) {
    cudaEventSynchronize(done_);
    cudaEventDestroy(done_);
  }
  if (uploaded_) cudaEventDestroy(uploaded_);
  for (cudaEvent_t e : stage_)
    if (e) cudaEventDestroy(e);
  if (handle_) cublasDestroy(handle_);
  if (pinned_) cudaFreeHost(pinned_);
  if (pinned_status_) cudaFreeHost(pinned_status_);
}

Result<size_t> GpuBatchEncoder::workspace_bytes(const GpuCalibration& gcal, const CalibrationData& cal,
                                                const std::vector<DeviceCacheView>& views, const EncodeOptions& opt) {
  std::vector<SeqPlan> plans;
  KVTC_RETURN_IF_ERROR(plan_all(gcal, cal, views, opt, &plans));
  Carver counter;
  BatchDev B;
  KVTC_RETURN_IF_ERROR(build_batch(plans, views, counter, nullptr, {}, nullptr, &B));
  return counter.used;
}

Result<std::vector<uint64_t>> GpuBatchEncoder::container_bound_bytes(const GpuCalibration& gcal,
                                                                     const CalibrationData& cal,
                                                                     const std::vector<DeviceCacheView>& views,
                                                                     const EncodeOptions& opt) {
  std::vector<SeqPlan> plans;
  KVTC_RETURN_IF_ERROR(plan_all(gcal, cal, views, opt, &plans));
  std::vector<uint64_t> out;
  for (const SeqPlan& sp : plans) out.push_back(sp.bound);
  return out;
}

Status GpuBatchEncoder::wait_previous() {
  if (done_ == nullptr) return Status::ok();
  KVTC_CUDA_RETURN(cudaEventSynchronize(done_));
  return Status::ok();
}

Status GpuBatchEncoder::set_workspace(void* dev, size_t bytes) {
  KVTC_RETURN_IF_ERROR(wait_previous());
  if (!handle_) {
    KVTC_RETURN_IF_ERROR(cublas_status(cublasCreate(&handle_), "cublasCreate"));
    // Plain fp32, as GpuEncoder: the same GEMM, the same coefficients.
    KVTC_RETURN_IF_ERROR(cublas_status(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"));
  }
  if (!done_) KVTC_CUDA_RETURN(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  for (cudaEvent_t& e : stage_)
    if (!e) KVTC_CUDA_RETURN(cudaEventCreate(&e));
  workspace_ = static_cast<uint8_t*>(dev);
  workspace_bytes_ = dev != nullptr ? bytes : 0;
  return Status::ok();
}

Status GpuBatchEncoder::encode(const GpuCalibration& gcal, const CalibrationData& cal,
                               const std::vector<DeviceCacheView>& views, const EncodeOptions& opt, uint8_t* out_dev,
                               const std::vector<uint64_t>& out_offsets, uint64_t* sizes_dev, cudaStream_t stream) {
  if (workspace_ == nullptr || !handle_) return invalid_argument("BatchEncoder: call set_workspace first");
  const auto host_start = std::chrono::steady_clock::now();
  const bool bf16 = projection_ == EncodeProjection::kBf16;
  KVTC_RETURN_IF_ERROR(cublas_status(
      cublasSetMathMode(handle_, projection_ == EncodeProjection::kTf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
      "cublasSetMathMode"));
  std::vector<SeqPlan> plans;
  KVTC_RETURN_IF_ERROR(plan_all(gcal, cal, views, opt, &plans));
  for (const SeqPlan& sp : plans)
    for (int s = 0; s < 2; ++s)
      if (bf16 && sp.plan.m > 0 && sp.plan.k[s] > 0 && !gcal.basis_bf16[s].get())
        return invalid_argument("BatchEncoder: the bf16 projection needs the calibration's bf16 basis "
                                "(DeviceCalibration::Options::bf16)");
  if (out_dev == nullptr || sizes_dev == nullptr) return invalid_argument("null output pointer");
  if (out_offsets.size() != views.size()) return invalid_argument("out_offsets must hold one offset per sequence");
  Carver carver;
  carver.base = workspace_;
  carver.bytes = workspace_bytes_;
  BatchDev B;
  KVTC_RETURN_IF_ERROR(build_batch(plans, views, carver, out_dev, out_offsets, sizes_dev, &B));

  // ---- Pinned staging, reused once the previous batch's upload is done (not the batch itself: the
  // device orders this batch after it, through done_).
  if (uploaded_) KVTC_CUDA_RETURN(cudaEventSynchronize(uploaded_));
  else KVTC_CUDA_RETURN(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming));
  const size_t blob_bytes = B.blob.bytes.size();
  if (blob_bytes > pinned_bytes_) {
    if (pinned_) cudaFreeHost(pinned_);
    pinned_ = nullptr;
    pinned_bytes_ = 0;
    KVTC_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&pinned_), blob_bytes));
    pinned_bytes_ = blob_bytes;
  }
  if (views.size() > pinned_status_n_) {
    if (pinned_status_) cudaFreeHost(pinned_status_);
    pinned_status_ = nullptr;
    pinned_status_n_ = 0;
    KVTC_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&pinned_status_), views.size() * sizeof(uint32_t)));
    pinned_status_n_ = views.size();
  }
  std::memcpy(pinned_, B.blob.bytes.data(), blob_bytes);
  pending_ = false;
  n_sequences_ = int(views.size());

  // ---- Device work, all on `stream`.
  host_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - host_start).count();
  KVTC_CUDA_RETURN(cudaStreamWaitEvent(stream, done_, 0));  // the previous batch's workspace use
  KVTC_CUDA_RETURN(cudaEventRecord(stage_[0], stream));
  KVTC_CUDA_RETURN(cudaMemcpyAsync(B.blob.dev, pinned_, blob_bytes, cudaMemcpyHostToDevice, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(uploaded_, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(stage_[1], stream));
  for (size_t i = 0; i < plans.size(); ++i) {
    const EncodePlan& P = plans[i].plan;
    if (P.needs_rope())
      KVTC_CUDA_RETURN(launch_rope_table(gcal.inv_freq.as<double>(), views[i].shape.head_dim / 2, P.rope_first_position,
                                         P.m, B.seq[i].rope, stream));
  }
  KVTC_RETURN_IF_ERROR(cublas_status(cublasSetStream(handle_, stream), "cublasSetStream"));
  const float one = 1.0f, zero = 0.0f;
  for (size_t i = 0; i < plans.size(); ++i) {
    const EncodePlan& P = plans[i].plan;
    const SeqDev& d = B.seq[i];
    const DeviceCacheView& v = views[i];
    const int64_t m = P.m, p = v.shape.n_features(), slab = plans[i].slab;
    for (int s = 0; s < 2; ++s) {
      if (m == 0 || P.k[s] == 0) continue;
      for (int64_t b0 = 0; b0 < m; b0 += slab) {
        const int64_t n = std::min(slab, m - b0);
        GatherViewParams g;
        g.src = d.src[s];
        g.rope = s == 0 ? d.rope + size_t(b0) * (v.shape.head_dim / 2) : nullptr;
        g.mean = gcal.mean[s].as<float>();
        if (bf16) {
          g.x_bf16 = reinterpret_cast<uint16_t*>(B.x);  // half of the fp32 slab's room
        } else {
          g.x = B.x;
        }
        g.token0 = P.t0 + b0;
        g.n = n;
        g.n_layers = v.shape.n_layers;
        g.rope_style = int(v.shape.rope.style);
        KVTC_CUDA_RETURN(launch_gather_view(g, stream));
        // coef (column-major m x k, ld m) rows b0.. = X^T (p x n, ld p)^T * basis (p x k, ld p): GpuEncoder's call.
        if (bf16) {
          KVTC_RETURN_IF_ERROR(cublas_status(
              cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(P.k[s]), int(p), &one, B.x, CUDA_R_16BF,
                           int(p), gcal.basis_bf16[s].get(), CUDA_R_16BF, int(p), &zero, B.coef + b0, CUDA_R_32F,
                           int(m), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx (bf16 projection)"));
        } else {
          KVTC_RETURN_IF_ERROR(cublas_status(
              cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(P.k[s]), int(p), &one, B.x, int(p),
                          gcal.basis_f32[s].as<float>(), int(p), &zero, B.coef + b0, int(m)),
              "cublasSgemm"));
        }
      }
      KVTC_CUDA_RETURN(launch_quantize(B.coef, m, d.qgroups[s], int(P.qgroups[s].size()), B.sym[s], B.side[s], stream));
    }
    KVTC_CUDA_RETURN(launch_pack(d.pack, d.n_pack, d.spans, stream));
  }
  KVTC_CUDA_RETURN(cudaEventRecord(stage_[2], stream));
  KVTC_CUDA_RETURN(launch_pack_exact(B.exact, B.n_exact, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(stage_[3], stream));
  const size_t N = size_t(B.n_chunks), ND = size_t(B.n_dense);
  DeflateResults primary{B.results, B.results + N, B.results + 2 * N};
  DeflateResults dense{B.dense_results, B.dense_results + ND, B.dense_results + 2 * ND};
  KVTC_CUDA_RETURN(launch_deflate_encode(B.deflate, int(N), B.results, B.results + N, B.results + 2 * N, stream));
  KVTC_CUDA_RETURN(launch_dense_gate(B.gates, int(ND), primary, B.dense_deflate, stream));
  KVTC_CUDA_RETURN(launch_deflate_encode(B.dense_deflate, int(ND), B.dense_results, B.dense_results + ND,
                                         B.dense_results + 2 * ND, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(stage_[4], stream));
  KVTC_CUDA_RETURN(launch_assemble(B.assembly, int(views.size()), primary, dense, stream));
  KVTC_CUDA_RETURN(cudaMemcpyAsync(pinned_status_, B.statuses, views.size() * sizeof(uint32_t),
                                   cudaMemcpyDeviceToHost, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(stage_[5], stream));
  KVTC_CUDA_RETURN(cudaEventRecord(done_, stream));
  pending_ = true;
  return Status::ok();
}

Status GpuBatchEncoder::status() {
  if (!pending_) return Status::ok();
  pending_ = false;
  KVTC_CUDA_RETURN(cudaEventSynchronize(done_));
  auto seconds = [&](int a, int b) {
    float ms = 0;
    cudaEventElapsedTime(&ms, stage_[a], stage_[b]);
    return double(ms) * 1e-3;
  };
  times_ = BatchEncodeTimes{host_s_,     seconds(0, 1), seconds(1, 2), seconds(2, 3),
                            seconds(3, 4), seconds(4, 5), seconds(0, 5)};
  for (int i = 0; i < n_sequences_; ++i) {
    const uint32_t st = pinned_status_[i];
    if (st == kAssemblyOk) continue;
    const char* what = st == kAssemblyDeflateFailed ? "GPU DEFLATE of a chunk failed"
                       : st == kAssemblyOverflow    ? "the container exceeds its bound"
                                                    : "the header template is inconsistent";
    return Status(StatusCode::kInternal, "sequence " + std::to_string(i) + ": " + what);
  }
  return Status::ok();
}

}  // namespace kvtc::cuda
