#include "cuda/gpu_decoder.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <tuple>

#include "core/token_classes.hpp"
#include "cuda/cublas_common.hpp"
#include "cuda/ecsq_classes.hpp"
#include "cuda/ecsq_decode.cuh"
#include "cuda/fp8_convert.cuh"
#include "cuda/restore_kernels.cuh"
#include "entropy/inflate.cuh"
#include "entropy/rans_chunk.hpp"
#include "util/half.hpp"
#include "util/status_macros.hpp"

namespace kvtc::cuda {

namespace {

// Copies v into a buffer already sized for it (decode() sizes every buffer before its first copy).
template <typename T>
Status copy_to(DeviceBuffer& buf, const std::vector<T>& v, cudaStream_t stream) {
  if (v.size() * sizeof(T) > buf.size_bytes()) return internal_error("device buffer smaller than its table");
  if (!v.empty()) KVTC_CUDA_RETURN(cudaMemcpyAsync(buf.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
  return Status::ok();
}

// The component table of a stream allocation (see CompInfo).
std::vector<CompInfo> component_table(const StreamAllocation& a) {
  std::vector<CompInfo> comps;
  comps.reserve(a.n_kept());
  uint32_t side_prefix = 0, prefix_bits = 0, count[5] = {0, 0, 0, 0, 0};
  for (const Group& g : a.groups) {
    uint8_t cls = 5;
    if (g.kind == GroupKind::kFloat16) cls = 4;
    else if (g.kind != GroupKind::kDropped) {
      const int cw = container_width_bits(g.width_bits);
      cls = cw == 1 ? 0 : cw == 2 ? 1 : cw == 4 ? 2 : 3;
    }
    for (uint32_t j = 0; j < g.n_components; ++j) {
      CompInfo ci;
      ci.kind = uint8_t(g.kind);
      ci.width_bits = g.width_bits;
      ci.cls = cls;
      ci.side_prefix = side_prefix;
      ci.prefix_bits = prefix_bits;
      std::copy(count, count + 5, ci.prefix_count);
      comps.push_back(ci);
      prefix_bits += uint32_t(value_bits(g.kind, g.width_bits));
      if (cls < 5) ++count[cls];
    }
    side_prefix += uint32_t(side_bits_per_token(g.kind) / 16);
  }
  return comps;
}

// A sequence's setup, shared by decode() (which sizes everything before its first launch) and
// prepare_sequence (load_host). Stream s's component table, after setting n_kept to the stream's
// kept-component count and checking that the device calibration holds that many basis rows.
Result<std::vector<CompInfo>> kept_component_table(const GpuCalibration& gcal, const ContainerHeader& h, int s,
                                                   int64_t& n_kept) {
  n_kept = h.streams[s].n_kept();
  if (n_kept > gcal.rows[s])
    return invalid_argument("the device calibration holds " + std::to_string(gcal.rows[s]) +
                            " basis rows, the container keeps " + std::to_string(n_kept));
  return component_table(h.streams[s]);
}

// The RoPE table of the compressed tokens, float2 [max(M, 1)][head_dim / 2]: its size, and its launch.
size_t rope_table_bytes(const ContainerHeader& h) {
  return size_t(std::max<int64_t>(int64_t(h.n_compressed_tokens()), 1)) * (h.shape.head_dim / 2) * sizeof(float2);
}
cudaError_t launch_sequence_rope(const GpuCalibration& gcal, GpuSequence& seq, cudaStream_t stream) {
  const ContainerHeader& h = seq.container.header;
  return launch_rope_table(gcal.inv_freq.as<double>(), h.shape.head_dim / 2, h.position_offset + h.n_head_exact,
                           int64_t(h.n_compressed_tokens()), seq.rope.as<float2>(), stream);
}

double event_seconds(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms * 1e-3;
}

}  // namespace

GpuBatchDecoder::~GpuBatchDecoder() {
  if (side_) cudaStreamSynchronize(side_);
  if (handle_) cublasDestroy(handle_);
  if (side_) cudaStreamDestroy(side_);
  if (payload_ready_) cudaEventDestroy(payload_ready_);
  if (exact_begin_) cudaEventDestroy(exact_begin_);
  if (exact_done_) cudaEventDestroy(exact_done_);
  if (coef_done_) cudaEventDestroy(coef_done_);
  for (auto e : stage_events_)
    if (e) cudaEventDestroy(e);
}

Status GpuBatchDecoder::ensure_handle() {
  if (handle_) return Status::ok();
  KVTC_RETURN_IF_ERROR(cublas_status(cublasCreate(&handle_), "cublasCreate"));
  KVTC_CUDA_RETURN(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
  KVTC_CUDA_RETURN(cudaEventCreateWithFlags(&payload_ready_, cudaEventDisableTiming));
  KVTC_CUDA_RETURN(cudaEventCreate(&exact_begin_));
  KVTC_CUDA_RETURN(cudaEventCreate(&exact_done_));
  KVTC_CUDA_RETURN(cudaEventCreate(&coef_done_));
  for (auto& e : stage_events_) KVTC_CUDA_RETURN(cudaEventCreate(&e));
  return Status::ok();
}

// Component tables and the RoPE table of a sequence whose container is set.
Status GpuBatchDecoder::prepare_sequence(const GpuCalibration& gcal, GpuSequence& seq, cudaStream_t stream) {
  const ContainerHeader& h = seq.container.header;
  for (int s = 0; s < 2; ++s) {
    KVTC_ASSIGN_OR_RETURN(const std::vector<CompInfo> table, kept_component_table(gcal, h, s, seq.n_kept[s]));
    KVTC_RETURN_IF_ERROR(upload_vector(seq.comps[s], table, stream));
  }
  KVTC_RETURN_IF_ERROR(seq.rope.reserve(rope_table_bytes(h)));
  KVTC_CUDA_RETURN(launch_sequence_rope(gcal, seq, stream));
  return Status::ok();
}

Status GpuBatchDecoder::decode(const GpuCalibration& gcal, const CalibrationData& cal,
                               const std::vector<std::pair<const uint8_t*, size_t>>& containers, bool verify_checksums,
                               bool want_f32, bool want_bf16, bool overlap_exact, cudaStream_t stream,
                               GpuDecodeTimes* times) {
  GpuDecodeOptions o;
  o.verify_checksums = verify_checksums;
  o.want_f32 = want_f32;
  o.want_bf16 = want_bf16;
  o.overlap_exact = overlap_exact;
  return decode(gcal, cal, containers, o, stream, times);
}

Status GpuBatchDecoder::alloc(DeviceBuffer& buffer, size_t bytes) {
  return use_arena_ ? buffer.carve(arena_, bytes) : buffer.reserve(bytes);
}

Status GpuBatchDecoder::set_workspace(void* base, size_t bytes) {
  if (exact_recorded_) {  // nothing may still run in the old buffers
    KVTC_CUDA_RETURN(cudaEventSynchronize(coef_done_));
    KVTC_CUDA_RETURN(cudaEventSynchronize(exact_done_));
  }
  coef_pending_ = exact_pending_ = false;
  use_arena_ = base != nullptr;
  arena_ = Arena{static_cast<uint8_t*>(base), use_arena_ ? bytes : 0, 0};
  return Status::ok();
}

Result<size_t> GpuBatchDecoder::workspace_bytes(const GpuCalibration& gcal, const CalibrationData& cal,
                                                const std::vector<std::pair<const uint8_t*, size_t>>& containers,
                                                const GpuDecodeOptions& options) {
  GpuBatchDecoder planner;
  planner.use_arena_ = true;
  planner.plan_only_ = true;  // arena_.base == nullptr: counts
  KVTC_RETURN_IF_ERROR(planner.decode(gcal, cal, containers, options, nullptr, nullptr));
  return planner.arena_.used;
}

Status GpuBatchDecoder::decode(const GpuCalibration& gcal, const CalibrationData& cal,
                               const std::vector<std::pair<const uint8_t*, size_t>>& containers,
                               const GpuDecodeOptions& options, cudaStream_t stream, GpuDecodeTimes* times) {
  const auto host_start = std::chrono::steady_clock::now();
  const bool want_f32 = options.want_f32, want_bf16 = options.want_bf16, overlap_exact = options.overlap_exact;
  const bool verify_checksums = options.verify_checksums;
  if (options.layers_per_gemm < 1) return invalid_argument("layers_per_gemm must be at least 1");
  if (!plan_only_) {
    KVTC_RETURN_IF_ERROR(ensure_handle());
    // The previous batch's kernels finish before this one's reuse its buffers (a device-side wait);
    // statuses it did not report are dropped.
    if (exact_recorded_) {
      KVTC_CUDA_RETURN(cudaStreamWaitEvent(stream, coef_done_, 0));
      KVTC_CUDA_RETURN(cudaStreamWaitEvent(stream, exact_done_, 0));
    }
    coef_pending_ = exact_pending_ = false;
  }
  if (use_arena_) arena_.used = 0;
  seqs_.resize(containers.size());  // kept between calls: owned device buffers only grow

  // ---- Host work, all of it before the first launch (a pageable upload queued behind a kernel would
  // block the host until that kernel ends and leave the device idle while the host catches up); the
  // payload copy starts as soon as the headers are parsed. Parse and check every header, lay out
  // payloads and inflated chunks.
  uint64_t payload_total = 0, raw_total = 0;
  std::vector<uint64_t> payload_base(containers.size());
  std::vector<std::vector<uint64_t>> raw_off(containers.size());
  for (size_t q = 0; q < containers.size(); ++q) {
    auto parsed = parse_container(containers[q].first, containers[q].second);
    if (!parsed.is_ok()) return parsed.status().with_context("sequence " + std::to_string(q));
    seqs_[q].container = std::move(parsed).value();
    const ContainerHeader& h = seqs_[q].container.header;
    KVTC_RETURN_IF_ERROR(check_container_matches(cal, h).with_context("sequence " + std::to_string(q)));
    payload_base[q] = payload_total;
    payload_total += containers[q].second - seqs_[q].container.payload_offset;
    raw_off[q].resize(h.chunks.size());
    for (size_t i = 0; i < h.chunks.size(); ++i) {  // raw sizes were checked by parse_container
      const ChunkEntry& c = h.chunks[i];
      if (c.coder == ChunkCoder::kEcsqRans) continue;  // decoded from the payload, never inflated
      raw_off[q][i] = raw_total;
      raw_total += (uint64_t(c.raw_bytes) + 15) & ~uint64_t(15);
    }
  }
  KVTC_RETURN_IF_ERROR(alloc(payload_, payload_total));
  KVTC_RETURN_IF_ERROR(alloc(raw_, raw_total));
  // The payloads go up now, while the host builds the job tables below (from pinned memory the copy
  // runs beside that work; from pageable memory it returns once staged). If the host work then
  // fails, the error waits for the copy: a later decode on another stream may reuse the buffer.
  cudaEvent_t* ev = stage_events_;
  struct WaitOnError {
    cudaStream_t stream = nullptr;
    bool armed = false;
    ~WaitOnError() {
      if (armed) cudaStreamSynchronize(stream);
    }
  } wait_on_error;
  if (!plan_only_) {
    KVTC_CUDA_RETURN(cudaEventRecord(ev[0], stream));
    wait_on_error = {stream, true};
    for (size_t q = 0; q < containers.size(); ++q) {
      const uint64_t off = seqs_[q].container.payload_offset;
      if (containers[q].second > off)
        KVTC_CUDA_RETURN(cudaMemcpyAsync(payload_.as<uint8_t>() + payload_base[q], containers[q].first + off,
                                         containers[q].second - off, cudaMemcpyHostToDevice, stream));
    }
  }

  // Inflate jobs: coefficient chunks (side, codes) first, then exact chunks, each part sorted longest
  // first (blocks start roughly in index order, so long serial streams do not set the launch's tail).
  // Coefficient chunks gate every layer; exact chunks are needed only for their rows, so with
  // overlap_exact they inflate on a second stream while the coefficients are dequantised and layers
  // reconstructed.
  std::vector<InflateJob> ijobs;
  std::vector<std::pair<uint32_t, uint32_t>> job_chunk;  // (sequence, chunk)
  size_t n_coef_jobs = 0;
  for (int part = 0; part < 2; ++part) {
    const size_t first = ijobs.size();
    for (size_t q = 0; q < seqs_.size(); ++q) {
      const ContainerHeader& h = seqs_[q].container.header;
      for (size_t i = 0; i < h.chunks.size(); ++i) {
        const ChunkEntry& c = h.chunks[i];
        if ((c.kind == ChunkKind::kExact) != (part == 1) || c.coder == ChunkCoder::kEcsqRans) continue;
        InflateJob j;
        j.src = payload_.as<uint8_t>() + payload_base[q] + c.offset;
        j.dst = raw_.as<uint8_t>() + raw_off[q][i];
        j.src_bytes = c.stored_bytes;
        j.dst_bytes = c.raw_bytes;
        j.crc32 = c.crc32;
        ijobs.push_back(j);
        job_chunk.push_back({uint32_t(q), uint32_t(i)});
      }
    }
    std::vector<size_t> order(ijobs.size() - first);
    for (size_t k = 0; k < order.size(); ++k) order[k] = first + k;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return ijobs[a].dst_bytes > ijobs[b].dst_bytes; });
    std::vector<InflateJob> sorted_jobs(order.size());
    std::vector<std::pair<uint32_t, uint32_t>> sorted_chunk(order.size());
    for (size_t k = 0; k < order.size(); ++k) {
      sorted_jobs[k] = ijobs[order[k]];
      sorted_chunk[k] = job_chunk[order[k]];
    }
    std::copy(sorted_jobs.begin(), sorted_jobs.end(), ijobs.begin() + int64_t(first));
    std::copy(sorted_chunk.begin(), sorted_chunk.end(), job_chunk.begin() + int64_t(first));
    if (part == 0) n_coef_jobs = ijobs.size();
  }
  const size_t n_exact_jobs = ijobs.size() - n_coef_jobs;

  // Dequantise and exact-conversion jobs; coefficient, component-table and exact buffers.
  std::vector<DequantJob> djobs_f32, djobs_bf16;
  std::vector<EcsqDecodeJob> ecsq_jobs;
  // Format 4 (token classes): each token block's rows (class-1 tokens first), shared by the block's
  // chunks; jobs hold offsets into class_rows until its buffer exists. Sized by a bound known without
  // the levels (a row per compressed token and stream), so that planning a workspace counts the same.
  std::vector<uint32_t> class_rows;
  std::vector<std::pair<size_t, size_t>> job_rows;  // (job, its block's first row in class_rows)
  size_t class_rows_bound = 0;
  std::vector<std::pair<uint32_t, uint32_t>> ecsq_job_chunk;
  std::vector<uint8_t> ecsq_group;  // per ECSQ job: its decode kernel (ecsq_job_group: lanes by its header, classes)
  std::vector<ExactJob> ejobs;
  std::vector<std::vector<CompInfo>> comp_tables(seqs_.size() * 2);
  size_t tmp_bytes = 0;  // restore scratch: fp32 [M][G][H][D] of the longest sequence, G layers per GEMM
  for (size_t q = 0; q < seqs_.size(); ++q) {
    GpuSequence& seq = seqs_[q];
    const ContainerHeader& h = seq.container.header;
    for (int s = 0; s < 2; ++s) {
      KVTC_ASSIGN_OR_RETURN(comp_tables[2 * q + size_t(s)], kept_component_table(gcal, h, s, seq.n_kept[s]));
      KVTC_RETURN_IF_ERROR(alloc(seq.comps[s], comp_tables[2 * q + size_t(s)].size() * sizeof(CompInfo)));
    }
    const int64_t m = int64_t(h.n_compressed_tokens());
    KVTC_RETURN_IF_ERROR(alloc(seq.rope, rope_table_bytes(h)));
    const size_t group = size_t(std::min(options.layers_per_gemm, std::max(h.shape.n_layers, 1)));
    tmp_bytes = std::max(tmp_bytes, size_t(m) * group * h.shape.n_kv_heads * h.shape.head_dim * sizeof(float));
    for (int s = 0; s < 2; ++s) {
      const size_t n = size_t(m) * size_t(seq.n_kept[s]);
      seq.coef_by_component[s] = h.streams[s].ecsq();
      if (want_f32) KVTC_RETURN_IF_ERROR(alloc(seq.coef_f32[s], n * sizeof(float)));
      if (want_bf16) KVTC_RETURN_IF_ERROR(alloc(seq.coef_bf16[s], n * 2));
      seq.kept_fp8[s] = fp8_padded(seq.n_kept[s]);
      if (options.want_fp8) KVTC_RETURN_IF_ERROR(alloc(seq.coef_fp8[s], size_t(m * seq.kept_fp8[s])));
    }
    seq.has_fp8 = options.want_fp8;
    if (options.want_fp8) KVTC_RETURN_IF_ERROR(alloc(seq.fp8_scale, 2 * kFp8ScaleFloats * sizeof(float)));
    // Codec 3 streams: their level's tables on the device (not needed to plan a workspace).
    const EcsqDeviceLevel* level[2] = {nullptr, nullptr};
    const EcsqDeviceLevel* level_high[2] = {nullptr, nullptr};
    for (int s = 0; s < 2 && !plan_only_; ++s)
      if (h.streams[s].ecsq()) {
        const EcsqModel& model = s == 0 ? cal.key.ecsq : cal.value.ecsq;
        auto lv = gcal.ecsq_levels->get(model, s, h.streams[s].ecsq_level, stream);
        if (!lv.is_ok()) return lv.status().with_context("sequence " + std::to_string(q));
        level[s] = *lv;
        if (!h.streams[s].token_classes()) continue;
        auto hv = gcal.ecsq_levels->get(model, s, h.streams[s].ecsq_level_high, stream);
        if (!hv.is_ok()) return hv.status().with_context("sequence " + std::to_string(q));
        level_high[s] = *hv;
      }
    std::vector<uint8_t> classes;  // the class map, read on the host (format 4)
    std::map<std::pair<int, uint32_t>, std::pair<size_t, uint32_t>> block_rows;  // (stream, token_begin) -> (row offset, n_high)
    if (h.token_classes()) class_rows_bound += 2 * size_t(h.n_compressed_tokens());
    if (h.token_classes() && !plan_only_) {
      auto cls = read_token_classes(h, containers[q].first + seq.container.payload_offset, verify_checksums);
      if (!cls.is_ok()) return cls.status().with_context("sequence " + std::to_string(q));
      classes = std::move(cls).value();
    }
    std::map<std::pair<int, uint32_t>, size_t> side_of;
    for (size_t i = 0; i < h.chunks.size(); ++i)
      if (h.chunks[i].kind == ChunkKind::kSide) side_of[{h.chunks[i].stream, h.chunks[i].token_begin}] = i;
    const int H = h.shape.n_kv_heads, D = h.shape.head_dim;
    // One [H][n][D] block per (stream, segment, layer); its chunks (several in version 2) fill token ranges.
    const int64_t seg_tokens[2] = {h.n_head_exact, h.n_tail_exact};
    const int64_t seg_begin[2] = {0, int64_t(h.n_tokens) - h.n_tail_exact};
    int64_t exact_total = 0;
    for (int s = 0; s < 2; ++s)
      for (int seg = 0; seg < 2; ++seg) {
        seq.exact_offset[s][seg].assign(size_t(h.shape.n_layers), -1);
        for (int l = 0; l < h.shape.n_layers && seg_tokens[seg] > 0; ++l) {
          seq.exact_offset[s][seg][size_t(l)] = exact_total;
          exact_total += int64_t(H) * seg_tokens[seg] * D;
        }
      }
    KVTC_RETURN_IF_ERROR(alloc(seq.exact, size_t(std::max<int64_t>(exact_total, 1)) * sizeof(float)));
    for (size_t i = 0; i < h.chunks.size(); ++i) {
      const ChunkEntry& c = h.chunks[i];
      if (c.kind == ChunkKind::kExact) {
        const int seg = c.token_begin < h.n_head_exact ? 0 : 1;
        ExactJob e;
        e.raw = raw_.as<uint8_t>() + raw_off[q][i];
        e.dst = seq.exact.as<float>() + seq.exact_offset[c.stream][seg][c.item_begin] +
                (int64_t(c.token_begin) - seg_begin[seg]) * D;
        e.n_elems = uint32_t(int64_t(H) * c.n_tokens * D);
        e.row_elems = uint32_t(int64_t(c.n_tokens) * D);
        e.head_stride = uint32_t(seg_tokens[seg] * D);
        e.dtype = uint32_t(h.dtype);
        ejobs.push_back(e);
        continue;
      }
      if (c.kind != ChunkKind::kCodes) continue;
      if (c.coder == ChunkCoder::kEcsqRans) {
        ecsq_job_chunk.push_back({uint32_t(q), uint32_t(i)});
        const bool by_class = h.streams[c.stream].token_classes();
        if (plan_only_) {
          ecsq_jobs.emplace_back();
          continue;
        }
        const EcsqDeviceLevel& lv = *level[c.stream];
        const uint32_t c1 = c.item_begin + c.n_items;
        // Named only on error: a container holds thousands of codes chunks (about 10,000 for NeMo 12B at 8K tokens).
        auto where = [&] { return "sequence " + std::to_string(q) + " chunk " + std::to_string(i); };
        EcsqDecodeJob e;
        if (by_class) {
          const EcsqDeviceLevel& hv = *level_high[c.stream];
          if (c1 > std::max(lv.n_kept, hv.n_kept)) return corrupt(where() + ": components beyond the ECSQ levels' kept ones");
          auto [it, fresh] = block_rows.try_emplace({c.stream, c.token_begin}, class_rows.size(), 0u);
          if (fresh)
            it->second.second =
                append_block_rows(classes.data() + (c.token_begin - h.n_head_exact), c.n_tokens, class_rows);
          const uint32_t n_high = it->second.second;
          const uint64_t n = class_chunk_symbols(lv, hv, c.item_begin, c1, c.n_tokens - n_high, n_high);
          if (n != c.raw_bytes)
            return corrupt(where() + ": " + std::to_string(c.raw_bytes) + " symbols, the class map and levels need " +
                           std::to_string(n));
          job_rows.push_back({ecsq_jobs.size(), it->second.first});  // a pointer once allocated
          e.cells_before = lv.cells_before_dev.as<uint32_t>();
          e.high_cells = hv.cells_dev.as<EcsqDeviceComponent>();
          e.high_slots = hv.slots_dev.as<uint8_t>();
          e.high_entries = hv.entries_dev.as<EcsqDeviceEntry>();
          e.high_cells_before = hv.cells_before_dev.as<uint32_t>();
          e.c0 = c.item_begin;
          e.c1 = c1;
          e.n_kept = lv.n_kept;
          e.high_n_kept = hv.n_kept;
          e.n_high = n_high;
        } else {
          if (c1 > lv.n_kept || c.n_tokens == 0) return corrupt(where() + ": components beyond the ECSQ level's kept ones");
          if (uint64_t(lv.cells_in(c.item_begin, c1)) * c.n_tokens != c.raw_bytes)
            return corrupt(where() + ": " + std::to_string(c.raw_bytes) + " symbols, the ECSQ level needs " +
                           std::to_string(uint64_t(lv.cells_in(c.item_begin, c1)) * c.n_tokens));
        }
        e.chunk = payload_.as<uint8_t>() + payload_base[q] + c.offset;
        e.cells = lv.cells_dev.as<EcsqDeviceComponent>();
        e.slots = lv.slots_dev.as<uint8_t>();
        e.entries = lv.entries_dev.as<EcsqDeviceEntry>();
        if (want_f32) e.coef_f32 = seq.coef_f32[c.stream].as<float>();
        if (want_bf16) e.coef_bf16 = seq.coef_bf16[c.stream].as<uint16_t>();
        // The E4M3 copy's amax comes from the decode itself (convert_to_fp8 skips its pass for ECSQ streams).
        if (options.want_fp8) e.abs_max = seq.fp8_scale.as<float>() + kFp8ScaleFloats * c.stream + kFp8AmaxIndex;
        e.chunk_bytes = c.stored_bytes;
        e.crc32 = c.crc32;
        e.n_symbols = c.raw_bytes;
        e.n_tokens = c.n_tokens;
        e.first_cell = lv.cells_before[c.item_begin];
        e.row0 = c.token_begin - h.n_head_exact;
        e.token_stride = 1;  // component-major (seq.coef_by_component)
        e.component_stride = uint32_t(m);
        // The rANS header's lane count and the classes pick the decode kernel; the kernel checks both
        // again.
        const uint8_t* stored = containers[q].first + seqs_[q].container.payload_offset + c.offset;
        const bool narrow = c.stored_bytes > kRansLanesOffset && stored[kRansLanesOffset] <= 32;
        ecsq_group.push_back(uint8_t(ecsq_job_group(narrow, by_class)));
        ecsq_jobs.push_back(e);
        continue;
      }
      DequantJob j;
      j.codes = raw_.as<uint8_t>() + raw_off[q][i];
      auto it = side_of.find({c.stream, c.token_begin});
      if (it != side_of.end()) {
        j.side = raw_.as<uint8_t>() + raw_off[q][it->second];
        j.side_count = h.chunks[it->second].raw_bytes / 2;
      }
      j.comps = seq.comps[c.stream].as<CompInfo>();
      j.codes_bytes = c.raw_bytes;
      j.n_tokens = c.n_tokens;
      j.row0 = c.token_begin - h.n_head_exact;
      j.c0 = c.item_begin;
      j.c1 = c.item_begin + c.n_items;
      j.ld = uint32_t(seq.n_kept[c.stream]);
      j.layout = uint32_t(c.layout);
      if (want_f32) {
        j.coef = seq.coef_f32[c.stream].get();
        djobs_f32.push_back(j);
      }
      if (want_bf16) {
        j.coef = seq.coef_bf16[c.stream].get();
        djobs_bf16.push_back(j);
      }
    }
  }
  // One job array: f32 jobs then bf16 jobs, sharing one status slot per codes chunk.
  std::vector<DequantJob> djobs = djobs_f32;
  djobs.insert(djobs.end(), djobs_bf16.begin(), djobs_bf16.end());
  // Status slots: one per inflate job, a gap, one per dequantise job, then one per codec 3 chunk.
  const size_t n_status = ijobs.size() + 1 + djobs.size() + ecsq_jobs.size();
  KVTC_RETURN_IF_ERROR(alloc(status_, sizeof(uint32_t) * n_status));
  KVTC_RETURN_IF_ERROR(alloc(inflate_jobs_, ijobs.size() * sizeof(InflateJob)));
  KVTC_RETURN_IF_ERROR(alloc(dequant_jobs_, djobs.size() * sizeof(DequantJob)));
  KVTC_RETURN_IF_ERROR(alloc(ecsq_jobs_, ecsq_jobs.size() * sizeof(EcsqDecodeJob)));
  KVTC_RETURN_IF_ERROR(alloc(class_rows_, class_rows_bound * sizeof(uint32_t)));
  for (const auto& [job, first_row] : job_rows) ecsq_jobs[job].rows = class_rows_.as<uint32_t>() + first_row;
  // Jobs sorted by decode kernel (with their (sequence, chunk) labels), in one counting pass.
  int ecsq_group_jobs[kEcsqJobGroups] = {};
  if (!plan_only_) {
    for (uint8_t g : ecsq_group) ++ecsq_group_jobs[g];
    size_t next[kEcsqJobGroups] = {};
    for (int g = 1; g < kEcsqJobGroups; ++g) next[g] = next[g - 1] + size_t(ecsq_group_jobs[g - 1]);
    std::vector<size_t> order(ecsq_jobs.size());
    for (size_t k = 0; k < order.size(); ++k) order[next[ecsq_group[k]]++] = k;
    std::vector<EcsqDecodeJob> jobs_sorted(order.size());
    std::vector<std::pair<uint32_t, uint32_t>> chunk_sorted(order.size());
    for (size_t k = 0; k < order.size(); ++k) {
      jobs_sorted[k] = ecsq_jobs[order[k]];
      chunk_sorted[k] = ecsq_job_chunk[order[k]];
    }
    ecsq_jobs = std::move(jobs_sorted);
    ecsq_job_chunk = std::move(chunk_sorted);
  }
  KVTC_RETURN_IF_ERROR(alloc(exact_jobs_, ejobs.size() * sizeof(ExactJob)));
  KVTC_RETURN_IF_ERROR(alloc(tmp_, tmp_bytes));
  layers_per_gemm_ = options.layers_per_gemm;
  fp8_fast_accum_ = options.fp8_fast_accum;
  if (plan_only_) return Status::ok();
  wait_on_error.armed = false;
  const double host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - host_start).count();

  // ---- Device work: the job tables (after the payloads), then one launch per stage.
  KVTC_RETURN_IF_ERROR(copy_to(inflate_jobs_, ijobs, stream));
  KVTC_RETURN_IF_ERROR(copy_to(dequant_jobs_, djobs, stream));
  KVTC_RETURN_IF_ERROR(copy_to(ecsq_jobs_, ecsq_jobs, stream));
  KVTC_RETURN_IF_ERROR(copy_to(class_rows_, class_rows, stream));
  KVTC_RETURN_IF_ERROR(copy_to(exact_jobs_, ejobs, stream));
  for (size_t q = 0; q < seqs_.size(); ++q)
    for (int s = 0; s < 2; ++s) KVTC_RETURN_IF_ERROR(copy_to(seqs_[q].comps[s], comp_tables[2 * q + size_t(s)], stream));
  KVTC_CUDA_RETURN(cudaEventRecord(ev[1], stream));
  uint32_t* inflate_status = status_.as<uint32_t>();
  uint32_t* dequant_status = inflate_status + ijobs.size() + 1;
  uint32_t* ecsq_status = dequant_status + djobs.size();
  KVTC_CUDA_RETURN(cudaMemsetAsync(status_.get(), 0, sizeof(uint32_t) * n_status, stream));
  // Exact chunks: with overlap_exact, inflate + convert on the side stream from here on (payload and
  // statuses in place), launched first so that their long serial streams hold multiprocessor slots
  // beside the coefficient decode instead of queueing behind it; otherwise after the coefficients.
  auto launch_exact = [&](cudaStream_t xs) -> Status {
    KVTC_CUDA_RETURN(cudaEventRecord(exact_begin_, xs));
    if (n_exact_jobs > 0) {
      if (overlap_exact)
        KVTC_CUDA_RETURN(launch_inflate(inflate_jobs_.as<InflateJob>() + n_coef_jobs, int(n_exact_jobs), verify_checksums,
                                        inflate_status + n_coef_jobs, xs));
      KVTC_CUDA_RETURN(launch_exact_convert(exact_jobs_.as<ExactJob>(), int(ejobs.size()), xs));
    }
    KVTC_CUDA_RETURN(cudaEventRecord(exact_done_, xs));
    return Status::ok();
  };
  if (overlap_exact) {
    KVTC_CUDA_RETURN(cudaEventRecord(payload_ready_, stream));
    KVTC_CUDA_RETURN(cudaStreamWaitEvent(side_, payload_ready_, 0));
    KVTC_RETURN_IF_ERROR(launch_exact(side_));
  }
  // Without overlap, one launch takes every chunk (coefficient chunks first, each part longest first):
  // exact chunks fill the multiprocessors as coefficient warps finish instead of waiting for the tail.
  const size_t n_first_launch = overlap_exact ? n_coef_jobs : ijobs.size();
  KVTC_CUDA_RETURN(launch_inflate(inflate_jobs_.as<InflateJob>(), int(n_first_launch), verify_checksums, inflate_status, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(ev[2], stream));
  exact_jobs_begin_ = n_coef_jobs;
  exact_pending_ = false;
  for (size_t q = 0; q < seqs_.size(); ++q) {
    GpuSequence& seq = seqs_[q];
    const ContainerHeader& h = seq.container.header;
    const int64_t m = int64_t(h.n_compressed_tokens());
    KVTC_CUDA_RETURN(launch_sequence_rope(gcal, seq, stream));
    // The E4M3 scales start at 0: the codec 3 decode merges its amax into them.
    if (options.want_fp8)
      KVTC_CUDA_RETURN(cudaMemsetAsync(seq.fp8_scale.get(), 0, 2 * kFp8ScaleFloats * sizeof(float), stream));
    // Components without a codes chunk (none in a valid container) would read as 0.
    for (int s = 0; s < 2; ++s) {
      const size_t n = size_t(m) * size_t(seq.n_kept[s]);
      if (want_f32) KVTC_CUDA_RETURN(cudaMemsetAsync(seq.coef_f32[s].get(), 0, n * sizeof(float), stream));
      if (want_bf16) KVTC_CUDA_RETURN(cudaMemsetAsync(seq.coef_bf16[s].get(), 0, n * 2, stream));
    }
  }
  if (!djobs_f32.empty())
    KVTC_CUDA_RETURN(launch_dequantize(dequant_jobs_.as<DequantJob>(), int(djobs_f32.size()), false, dequant_status, stream));
  if (!djobs_bf16.empty())
    KVTC_CUDA_RETURN(launch_dequantize(dequant_jobs_.as<DequantJob>() + djobs_f32.size(), int(djobs_bf16.size()), true,
                                       dequant_status + djobs_f32.size(), stream));
  KVTC_CUDA_RETURN(launch_ecsq_decode(ecsq_jobs_.as<EcsqDecodeJob>(), ecsq_group_jobs, verify_checksums, ecsq_status, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(ev[3], stream));
  if (options.want_fp8) KVTC_RETURN_IF_ERROR(convert_to_fp8(want_f32, stream));
  KVTC_CUDA_RETURN(cudaEventRecord(ev[4], stream));
  if (!overlap_exact) KVTC_RETURN_IF_ERROR(launch_exact(stream));
  exact_recorded_ = true;
  exact_pending_ = overlap_exact;

  // Statuses: read now (the one synchronisation), or left on the device for status() (defer_status).
  n_inflate_jobs_ = ijobs.size();
  n_dequant_jobs_ = djobs.size();
  n_ecsq_jobs_ = ecsq_jobs.size();
  job_chunk_ = std::move(job_chunk);
  ecsq_job_chunk_ = std::move(ecsq_job_chunk);
  last_times_ = GpuDecodeTimes{};
  last_times_.host_s = host_s;
  KVTC_CUDA_RETURN(cudaEventRecord(coef_done_, stream));
  coef_pending_ = true;
  if (!options.defer_status) {
    const auto wait_start = std::chrono::steady_clock::now();
    const Status st = check_coefficients();
    last_times_.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
    KVTC_RETURN_IF_ERROR(st);
  }
  if (times) *times = last_times_;
  return Status::ok();
}

// E4M3 copies of every sequence's coefficients, from the fp32 ones (else the bf16 ones): one
// per-tensor scale per stream, found on the device. The scales were zeroed before the decode; codec 3
// streams (ECSQ, coef_by_component) already hold their amax from the decode kernel, the others get a
// pass over their coefficients here.
Status GpuBatchDecoder::convert_to_fp8(bool from_f32, cudaStream_t stream) {
  for (GpuSequence& seq : seqs_) {
    const int64_t m = int64_t(seq.container.header.n_compressed_tokens());
    for (int s = 0; s < 2; ++s) {
      if (m == 0 || seq.n_kept[s] == 0) continue;
      Fp8Source fs;
      fs.data = from_f32 ? seq.coef_f32[s].get() : seq.coef_bf16[s].get();
      fs.bf16 = !from_f32;
      fs.transposed = seq.coef_by_component[s];  // [n_kept][M]
      fs.ld = seq.coef_by_component[s] ? m : seq.n_kept[s];
      fs.rows = m;
      fs.components = seq.n_kept[s];
      float* scale = seq.fp8_scale.as<float>() + kFp8ScaleFloats * s;
      if (!seq.container.header.streams[s].ecsq()) KVTC_CUDA_RETURN(launch_abs_max(fs, scale, stream));
      KVTC_CUDA_RETURN(launch_to_e4m3(fs, scale, seq.coef_fp8[s].as<uint8_t>(), seq.kept_fp8[s], stream));
    }
  }
  return Status::ok();
}

// Waits for the coefficient work of the last decode and reports its inflate and dequantise statuses
// (and the exact chunks' when they ran on the main stream).
Status GpuBatchDecoder::check_coefficients() {
  if (!coef_pending_) return Status::ok();
  coef_pending_ = false;
  KVTC_CUDA_RETURN(cudaEventSynchronize(coef_done_));
  const bool overlapped = exact_pending_;
  std::vector<uint32_t> st(n_inflate_jobs_ + 1 + n_dequant_jobs_ + n_ecsq_jobs_);
  KVTC_CUDA_RETURN(cudaMemcpy(st.data(), status_.get(), st.size() * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  cudaEvent_t* ev = stage_events_;
  last_times_.upload_s = event_seconds(ev[0], ev[1]);
  last_times_.inflate_s = event_seconds(ev[1], ev[2]);
  last_times_.dequantize_s = event_seconds(ev[2], ev[3]);
  last_times_.fp8_s = event_seconds(ev[3], ev[4]);
  if (!overlapped) {
    KVTC_CUDA_RETURN(cudaEventSynchronize(exact_done_));
    last_times_.exact_s = event_seconds(exact_begin_, exact_done_);
  }
  last_times_.total_s = event_seconds(ev[0], overlapped ? ev[4] : exact_done_);
  for (size_t k = 0; k < (overlapped ? exact_jobs_begin_ : n_inflate_jobs_); ++k) {
    if (st[k] == kInflateOk) continue;
    const std::string where = "sequence " + std::to_string(job_chunk_[k].first) + " chunk " + std::to_string(job_chunk_[k].second);
    if (st[k] == kInflateBadChecksum) return checksum_mismatch(where + ": chunk checksum mismatch");
    return corrupt(where + ": " + inflate_status_name(st[k]));
  }
  for (size_t k = 0; k < n_dequant_jobs_; ++k)
    if (st[n_inflate_jobs_ + 1 + k]) return corrupt("codes chunk: a code exceeds its width, or a non-finite fp16 value or side scale / shift");
  for (size_t k = 0; k < n_ecsq_jobs_; ++k) {
    const uint32_t e = st[n_inflate_jobs_ + 1 + n_dequant_jobs_ + k];
    if (e == kEcsqOk) continue;
    const std::string where = "sequence " + std::to_string(ecsq_job_chunk_[k].first) + " chunk " +
                              std::to_string(ecsq_job_chunk_[k].second);
    if (e == kEcsqBadChecksum) return checksum_mismatch(where + ": chunk checksum mismatch");
    return corrupt(where + ": " + ecsq_decode_status_name(e));
  }
  return Status::ok();
}

Status GpuBatchDecoder::status(GpuDecodeTimes* times) {
  const Status coef = check_coefficients();
  const Status exact = exact_status(nullptr);
  if (times) *times = last_times_;
  return coef.is_ok() ? exact : coef;
}

Status GpuBatchDecoder::exact_status(GpuDecodeTimes* times) {
  if (!exact_pending_) return Status::ok();
  exact_pending_ = false;
  KVTC_CUDA_RETURN(cudaEventSynchronize(exact_done_));
  last_times_.exact_s = event_seconds(exact_begin_, exact_done_);
  if (times) times->exact_s = last_times_.exact_s;
  std::vector<uint32_t> st(n_inflate_jobs_ - exact_jobs_begin_);
  if (!st.empty())
    KVTC_CUDA_RETURN(cudaMemcpy(st.data(), status_.as<uint32_t>() + exact_jobs_begin_, st.size() * sizeof(uint32_t),
                                cudaMemcpyDeviceToHost));
  for (size_t k = 0; k < st.size(); ++k) {
    if (st[k] == kInflateOk) continue;
    const auto& [q, i] = job_chunk_[exact_jobs_begin_ + k];
    const std::string where = "sequence " + std::to_string(q) + " chunk " + std::to_string(i);
    if (st[k] == kInflateBadChecksum) return checksum_mismatch(where + ": chunk checksum mismatch");
    return corrupt(where + ": " + inflate_status_name(st[k]));
  }
  return Status::ok();
}

Status GpuBatchDecoder::load_host(const GpuCalibration& gcal, const DecodedCoefficients& dec, cudaStream_t stream) {
  KVTC_RETURN_IF_ERROR(ensure_handle());
  seqs_.resize(1);
  GpuSequence& seq = seqs_[0];
  seq.container = dec.container;
  const ContainerHeader& h = seq.container.header;
  KVTC_RETURN_IF_ERROR(prepare_sequence(gcal, seq, stream));
  for (int s = 0; s < 2; ++s) {
    if (dec.coef[s].size() != size_t(h.n_compressed_tokens()) * size_t(seq.n_kept[s]))
      return invalid_argument("decoded coefficients have the wrong size");
    KVTC_RETURN_IF_ERROR(upload_vector(seq.coef_f32[s], dec.coef[s], stream));
    seq.coef_by_component[s] = false;  // the host's [M][n_kept]
  }
  seq.has_fp8 = false;
  std::vector<float> exact;
  for (int s = 0; s < 2; ++s)
    for (int seg = 0; seg < 2; ++seg) {
      seq.exact_offset[s][seg].assign(size_t(h.shape.n_layers), -1);
      for (int l = 0; l < h.shape.n_layers && size_t(l) < dec.exact[s][seg].size(); ++l) {
        const auto& v = dec.exact[s][seg][size_t(l)];
        if (v.empty()) continue;
        seq.exact_offset[s][seg][size_t(l)] = int64_t(exact.size());
        exact.insert(exact.end(), v.begin(), v.end());
      }
    }
  KVTC_RETURN_IF_ERROR(upload_vector(seq.exact, exact, stream));
  KVTC_CUDA_RETURN(cudaStreamSynchronize(stream));  // host vectors go out of scope
  exact_pending_ = false;
  return Status::ok();
}

Status GpuBatchDecoder::restore_layer(const GpuCalibration& gcal, int seq_index, int layer, void* k_dev, void* v_dev,
                                      OutType type, cudaStream_t stream) {
  if (seq_index < 0 || seq_index >= n_sequences()) return invalid_argument("sequence index out of range");
  const ContainerHeader& h = seqs_[size_t(seq_index)].container.header;
  DstLayout out[2];
  for (int s = 0; s < 2; ++s) {
    out[s].base = s == 0 ? k_dev : v_dev;
    out[s].bf16 = type == OutType::kBF16;
    out[s].head_stride = int64_t(h.n_tokens) * h.shape.head_dim;
    out[s].n_heads = h.shape.n_kv_heads;
    out[s].head_dim = h.shape.head_dim;
  }
  return restore_group_to(gcal, seq_index, layer, 1, out, stream, nullptr);
}

Status GpuBatchDecoder::restore_layers(const GpuCalibration& gcal, int seq_index, int first_layer, int n_layers,
                                       void* const* k_layers, void* const* v_layers, OutType type, cudaStream_t stream,
                                       const cudaEvent_t* events) {
  if (seq_index < 0 || seq_index >= n_sequences()) return invalid_argument("sequence index out of range");
  const ContainerHeader& h = seqs_[size_t(seq_index)].container.header;
  if (first_layer < 0 || n_layers < 0 || first_layer + n_layers > h.shape.n_layers)
    return invalid_argument("layers out of range");
  // fp32 contiguous restores reconstruct in place, one layer at a time.
  const int group = type == OutType::kBF16 ? layers_per_gemm_ : 1;
  std::vector<DstLayout> out;
  for (int l0 = first_layer; l0 < first_layer + n_layers; l0 += group) {
    const int n = std::min(group, first_layer + n_layers - l0);
    out.assign(size_t(2 * n), DstLayout{});
    for (int i = 0; i < 2 * n; ++i) {
      DstLayout& o = out[size_t(i)];
      o.base = (i % 2 == 0 ? k_layers : v_layers)[l0 - first_layer + i / 2];
      o.bf16 = type == OutType::kBF16;
      o.head_stride = int64_t(h.n_tokens) * h.shape.head_dim;
      o.n_heads = h.shape.n_kv_heads;
      o.head_dim = h.shape.head_dim;
    }
    KVTC_RETURN_IF_ERROR(restore_group_to(gcal, seq_index, l0, n, out.data(), stream,
                                          events != nullptr ? events + (l0 - first_layer) : nullptr));
  }
  return Status::ok();
}

Status GpuBatchDecoder::restore_layer_paged(const GpuCalibration& gcal, int seq_index, int layer, void* layer_cache,
                                            const int32_t* block_table, int block_size, OutType type,
                                            cudaStream_t stream) {
  if (seq_index < 0 || seq_index >= n_sequences()) return invalid_argument("sequence index out of range");
  if (layer_cache == nullptr || block_table == nullptr || block_size <= 0)
    return invalid_argument("paged restore needs a layer cache, a block table and a positive block size");
  const ContainerHeader& h = seqs_[size_t(seq_index)].container.header;
  DstLayout out[2];
  for (int s = 0; s < 2; ++s) {
    out[s].base = layer_cache;
    out[s].bf16 = type == OutType::kBF16;
    out[s].block_table = block_table;
    out[s].block_size = block_size;
    out[s].kv = s;
    out[s].n_heads = h.shape.n_kv_heads;
    out[s].head_dim = h.shape.head_dim;
  }
  return restore_group_to(gcal, seq_index, layer, 1, out, stream, nullptr);
}

Status GpuBatchDecoder::restore_group_to(const GpuCalibration& gcal, int seq_index, int layer, int n_group,
                                         const DstLayout* out, cudaStream_t stream, const cudaEvent_t* events) {
  const GpuSequence& seq = seqs_[size_t(seq_index)];
  const ContainerHeader& h = seq.container.header;
  if (layer < 0 || n_group < 1 || layer + n_group > h.shape.n_layers)
    return invalid_argument("layer " + std::to_string(layer) + " out of range");
  const bool bf16 = out[0].bf16;
  // FP8 reconstruction: bf16 restores of a batch decoded with E4M3 coefficients.
  const bool fp8 = bf16 && seq.has_fp8 && gcal.has_fp8;
  if (!fp8 && (bf16 ? !gcal.has_bf16 : !gcal.has_f32))
    return invalid_argument("the device calibration lacks this precision's basis");
  KVTC_RETURN_IF_ERROR(cublas_status(cublasSetStream(handle_, stream), "cublasSetStream"));
  const int H = h.shape.n_kv_heads, D = h.shape.head_dim;
  const int64_t T = int64_t(h.n_tokens), t0 = h.n_head_exact, m = int64_t(h.n_compressed_tokens());
  const int64_t p = h.shape.n_features(), col0 = int64_t(layer) * H * D;
  const float one = 1.0f, zero = 0.0f;
  // bf16 (and FP8) restores reconstruct into tmp_ (fp32; bf16 from the FP8 GEMM), token-major
  // [m][G][H][D] for a group of G layers,
  // with one GEMM over their G * H * D features: an M of H * D or more instead of D keeps cuBLAS's large
  // tiles busy whichever way the coefficients lie, and more layers per GEMM run nearer the peak rate.
  // fp32 restores keep one GEMM per head, so that the paged and contiguous layouts get the same bits:
  // in place for contiguous outputs, into tmp_ [H][m][D] for paged ones.
  const bool in_place = !bf16 && out[0].block_table == nullptr;
  if (!bf16 && n_group > 1) return invalid_argument("fp32 restores take one layer at a time");
  const int HD = H * D;
  const int64_t GHD = int64_t(n_group) * HD;
  const bool product_bf16 = fp8 && GHD % 8 == 0;  // the FP8 GEMM's output rows in 16-byte units
  const size_t tmp_bytes = size_t(m) * size_t(GHD) * sizeof(float);
  if (!in_place && m > 0 && tmp_.size_bytes() < tmp_bytes) {
    if (use_arena_) return internal_error("restore scratch missing from the workspace");
    KVTC_RETURN_IF_ERROR(tmp_.reserve(tmp_bytes));  // sequences loaded by load_host
  }
  for (int s = 0; s < 2; ++s) {
    const int64_t kept = seq.n_kept[s];
    float* c = in_place ? static_cast<float*>(out[s].base) + t0 * D : tmp_.as<float>();
    if (m > 0) {
      // Column-major for cuBLAS: c = basis * coef with basis the group's (G*H*D) x kept slice of the
      // calibration's [kept][p] rows (ld p), coef kept x m: token-major (ld kept, OP_N) or the transpose
      // of an m x kept matrix (component-major, ld m, OP_T).
      const cublasOperation_t coef_op = seq.coef_by_component[s] ? CUBLAS_OP_T : CUBLAS_OP_N;
      const int coef_ld = seq.coef_by_component[s] ? int(m) : int(kept);
      if (kept > 0 && fp8) {
        // c[(G*H*D) x m] = basis_fp8[kept_fp8 x G*H*D]^T * coef_fp8[kept_fp8 x m] ("TN", as FP8 needs),
        // written as bf16 where its rows are whole 16-byte units (the restore's output is bf16, and the
        // epilogue reads half the bytes), else fp32.
        if (seq.kept_fp8[s] > gcal.rows_fp8[s]) return invalid_argument("the device calibration's FP8 basis has too few rows");
        const uint8_t* basis = gcal.basis_fp8[s].as<uint8_t>() + col0 * gcal.rows_fp8[s];
        const float* coef_scale = seq.fp8_scale.as<float>() + kFp8ScaleFloats * s;
        void* product = product_bf16 ? static_cast<void*>(tmp_.as<uint16_t>()) : static_cast<void*>(c);
        KVTC_RETURN_IF_ERROR(fp8_gemm_.run_any(GHD, m, seq.kept_fp8[s], basis, gcal.rows_fp8[s],
                                               gcal.fp8_scale[s].as<float>(), seq.coef_fp8[s].as<uint8_t>(),
                                               seq.kept_fp8[s], coef_scale, product, product_bf16, GHD,
                                               fp8_fast_accum_, stream));
      } else if (kept > 0 && !bf16) {
        // Per head h: c_h[D x m] = basis_h[D x kept] * coef, at head stride T * D (in place) or m * D.
        if (!seq.coef_f32[s].get()) return invalid_argument("no fp32 coefficients decoded");
        KVTC_RETURN_IF_ERROR(cublas_status(
            cublasSgemmStridedBatched(handle_, CUBLAS_OP_N, coef_op, D, int(m), int(kept), &one,
                                      gcal.basis_f32[s].as<float>() + col0, int(p), D, seq.coef_f32[s].as<float>(),
                                      coef_ld, 0, &zero, c, D, in_place ? T * D : m * D, H),
            "cublasSgemmStridedBatched"));
      } else if (kept > 0) {
        if (!seq.coef_bf16[s].get()) return invalid_argument("no bf16 coefficients decoded");
        KVTC_RETURN_IF_ERROR(cublas_status(
            cublasGemmEx(handle_, CUBLAS_OP_N, coef_op, int(GHD), int(m), int(kept), &one,
                         gcal.basis_bf16[s].as<uint16_t>() + col0, CUDA_R_16BF, int(p), seq.coef_bf16[s].get(),
                         CUDA_R_16BF, coef_ld, &zero, c, CUDA_R_32F, int(GHD), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx (bf16 restore)"));
      } else if (in_place) {
        KVTC_CUDA_RETURN(cudaMemset2DAsync(c, size_t(T) * D * 4, 0, size_t(m) * D * 4, H, stream));
      } else {  // [H][m][D] or [m][G][H][D]: the same bytes
        KVTC_CUDA_RETURN(cudaMemsetAsync(c, 0, tmp_bytes, stream));
      }
    }
    const float* exact = seq.exact.as<float>();
    for (int g = 0; g < n_group; ++g) {
      const int l = layer + g;
      const DstLayout& dst = out[2 * g + s];
      if (m > 0) {
        EpilogueParams ep;
        ep.mean = gcal.mean[s].as<float>() + int64_t(l) * HD;
        ep.rope_table = s == 0 ? seq.rope.as<float2>() : nullptr;
        ep.rope_style = int(h.shape.rope.style);
        ep.n_heads = H;
        ep.head_dim = D;
        // The FP8 GEMM's bf16 product; the others' fp32 (token-major [m][G][H][D] for bf16 restores).
        ep.src_bf16 = product_bf16 && kept > 0;
        if (ep.src_bf16) ep.src = tmp_.as<uint16_t>() + int64_t(g) * HD;
        else ep.src = bf16 ? c + int64_t(g) * HD : c;
        ep.src_token_stride = bf16 ? GHD : D;
        ep.src_head_stride = bf16 ? D : in_place ? T * D : m * D;
        ep.rows = m;
        ep.out = dst;
        ep.t_offset = t0;
        KVTC_CUDA_RETURN(launch_epilogue(ep, stream));
      }
      // Exact rows come from the exact chunks, which may still be inflating on the side stream.
      if (g == 0 && exact_recorded_) KVTC_CUDA_RETURN(cudaStreamWaitEvent(stream, exact_done_, 0));
      const int64_t head_off = seq.exact_offset[s][0][size_t(l)], tail_off = seq.exact_offset[s][1][size_t(l)];
      if (h.n_head_exact > 0 && head_off >= 0)
        KVTC_CUDA_RETURN(launch_exact_scatter(exact + head_off, h.n_head_exact, dst, 0, stream));
      if (h.n_tail_exact > 0 && tail_off >= 0)
        KVTC_CUDA_RETURN(launch_exact_scatter(exact + tail_off, h.n_tail_exact, dst, T - h.n_tail_exact, stream));
      if (s == 1 && events != nullptr && events[g] != nullptr) KVTC_CUDA_RETURN(cudaEventRecord(events[g], stream));
    }
  }
  return Status::ok();
}

}  // namespace kvtc::cuda
