// kvtc/kvtc_cuda.hpp: restoring compressed KV caches straight into GPU memory.
//
// Available when kvtc was built with KVTC_CUDA (the macro KVTC_WITH_CUDA is then defined for users
// of the kvtc target). This header includes no CUDA header: streams and events are passed as
// `void*` (a cudaStream_t / cudaEvent_t), device buffers as plain pointers.
//
//   auto dcal = kvtc::cuda::DeviceCalibration::upload(cal, {}, stream);      // once per model
//   kvtc::cuda::BatchDecoder dec;                                            // reuse across calls
//   dec.decode(*dcal, {{bytes0, size0}, {bytes1, size1}}, {}, stream);       // many sequences at once
//   for (int l = 0; l < n_layers; ++l)                                       // layer 0 first
//     dec.restore_layer(*dcal, seq, l, k_dev[l], v_dev[l], kvtc::cuda::ElementType::kBF16, stream);
//
// What runs where. decode() parses and checks the container headers on the host, copies the payloads
// to the device once, then runs one launch per stage over every chunk of every sequence: inflate (a
// warp per DEFLATE chunk, validating every bit), unpack + dequantise (bit-identical to the CPU
// decoder), exact-token conversion and the RoPE table. It synchronises once, at the end, to read the
// per-chunk statuses, and reports CORRUPT / CHECKSUM_MISMATCH naming the sequence and chunk.
// restore_layer() is asynchronous: one batched cuBLAS GEMM per stream (that layer's basis columns
// only), one epilogue kernel (mean, RoPE, dtype) and the exact tokens; no host synchronisation and
// no allocation after the first call of a given size.
//
// Threading: one BatchDecoder per host thread (it owns a cuBLAS handle and its buffers); a
// DeviceCalibration may be shared by many decoders for reading.
// Errors: Status values (StatusCode::kCuda for CUDA failures); nothing throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kvtc/kvtc.hpp"

namespace kvtc::cuda {

// Whether a CUDA device is usable; when not, `why` says why ("no CUDA device: ...").
bool device_available(std::string* why);

// Page-locked host memory (cudaMallocHost / cudaFreeHost), which the GPU reads by DMA with no staging
// copy: e.g. where a store's host tier keeps its values, so that decode() uploads them straight:
//   kvtc::store::HostTierOptions o;  o.memory = {kvtc::cuda::allocate_pinned, kvtc::cuda::free_pinned};
// allocate_pinned returns null when the memory cannot be had (or there is no CUDA device).
void* allocate_pinned(size_t size_bytes);
void free_pinned(void* data, size_t size_bytes);

// Element type of restored tensors on the device.
enum class ElementType { kF32, kBF16 };

// A calibration's means and bases in device memory. fp32 bases give the exact path (fp32 GEMM,
// results within fp32 rounding of the CPU decoder); bf16 bases give the tensor-core path (bf16
// coefficients and basis, fp32 accumulation, mean and RoPE in fp32, bf16 output). An FP8 (E4M3)
// basis gives FP8 reconstruction (BatchDecodeOptions::fp8_reconstruction): Hopper's FP8 tensor cores
// at twice bf16's rate, fp32 accumulation, one scale per basis and per coefficient matrix.
class DeviceCalibration {
 public:
  struct Options {
    bool fp32 = true;
    bool bf16 = true;
    bool fp8 = false;       // E4M3 copy, [features][rows] (made on the device from the fp32 rows)
    int64_t max_rows = -1;  // basis rows uploaded (-1: all); must cover every container's kept components
  };
  // Copies to the device on `cuda_stream` and waits for the copy (a setup call, not on the hot path).
  static Result<DeviceCalibration> upload(const Calibration& cal, const Options& options, void* cuda_stream);
  // Device bytes this calibration occupies.
  size_t device_bytes() const;
  const Calibration& calibration() const;

  ~DeviceCalibration();
  DeviceCalibration(DeviceCalibration&&) noexcept;
  DeviceCalibration& operator=(DeviceCalibration&&) noexcept;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit DeviceCalibration(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct BatchDecodeOptions {
  bool verify_checksums = true;  // CRC-32 of every chunk, on the GPU
  bool keep_fp32 = true;         // fp32 coefficients (for ElementType::kF32 restores)
  bool keep_bf16 = true;         // bf16 coefficients (for ElementType::kBF16 restores)
  // FP8 reconstruction: decode() also makes an E4M3 copy of the coefficients (from the fp32 ones if
  // kept, else the bf16 ones), and kBF16 restores then run the reconstruction GEMM in FP8 (E4M3 inputs,
  // fp32 accumulation, the product rounded to bf16) instead of bf16; mean and RoPE are then applied in
  // fp32 as before. For codec 3 the decode kernel finds the E4M3 scale as it writes. Needs a
  // DeviceCalibration uploaded with Options::fp8 and a GPU with FP8 tensor cores (compute capability
  // 8.9+; elsewhere restores fail with UNSUPPORTED or a cuBLAS error). kF32 restores stay exact. The
  // error it adds is measured per layer in bench/RESULTS.md ("FP8 reconstruction"). The E4M3 copies are part of
  // workspace_bytes(); the first FP8 restore of a decoder also allocates cuBLASLt's 32 MiB workspace,
  // outside the memory given to set_workspace.
  bool fp8_reconstruction = false;
  // Exact-token chunks (attention sinks and the recent window: the longest serial DEFLATE streams)
  // inflate on a second stream, launched right after the upload, while coefficients are decoded and
  // dequantised (2.1 ms of NeMo 12B's 21 ms FP8 restore, bench/RESULTS.md). decode()
  // then checks only the coefficient chunks; call exact_status() (it waits) for the exact ones.
  // restore_layer() orders its exact rows after them on the device, without a host wait.
  bool overlap_exact = false;
  // decode() returns without waiting for the device: chunk statuses stay in device memory and
  // status() waits for them and reports. Restores may be queued at once; their results are valid only
  // if status() then returns OK.
  bool defer_status = false;
  // restore_all reconstructs up to this many consecutive layers of a bf16 restore with one GEMM per
  // stream: larger GEMMs run nearer the tensor cores' peak rate, but a group's layers all become ready
  // when its GEMMs end (layer_events say so), and the restore scratch in workspace_bytes grows by this
  // factor (m x layers_per_gemm x n_kv_heads x head_dim fp32). restore_layer and restore_layer_paged
  // always take one layer. bench/RESULTS.md ("CUDA backend") measures the trade.
  int layers_per_gemm = 1;
  // FP8 reconstruction only: cuBLASLt's fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM), which
  // keeps the tensor cores' partial sums instead of promoting them to fp32 every few steps of the
  // reduction: faster GEMMs (about 1.35x at NeMo 12B's shape on an H100) for more rounding error, which
  // bench/RESULTS.md ("FP8 reconstruction") measures against the codec's own per layer.
  bool fp8_fast_accum = false;
};

// Device time of the last decode's stages, from CUDA events, in seconds; and two host-clock
// intervals: host_s from decode()'s start to its first launch (parsing, checks, job tables), wait_s
// its final synchronisation. upload_s starts when the payload copy does, right after the headers are
// parsed, so it overlaps the rest of host_s. Without overlap_exact, inflate_s covers every chunk (one
// launch) and exact_s the exact tokens' conversion; with it, exact_s is the side stream's inflate +
// convert.
struct BatchDecodeTimes {
  double upload_s = 0, inflate_s = 0, dequantize_s = 0, exact_s = 0, total_s = 0;
  double host_s = 0, wait_s = 0;
  double fp8_s = 0;  // the E4M3 copies of fp8_reconstruction, after dequantize_s
};

// A host-memory container: pointer and size in bytes.
using ContainerView = std::pair<const uint8_t*, size_t>;

class BatchDecoder {
 public:
  BatchDecoder();
  ~BatchDecoder();
  BatchDecoder(BatchDecoder&&) noexcept;
  BatchDecoder& operator=(BatchDecoder&&) noexcept;

  // Decodes every container (all made with dcal's calibration) on the device. Replaces the previous
  // batch; device buffers are kept and grow only.
  Status decode(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                const BatchDecodeOptions& options, void* cuda_stream);

  // Device bytes that decode() of these containers with these options, and every restore after it,
  // use when given a workspace: the compressed payloads, inflated chunks, coefficients, exact tokens,
  // tables and the restore scratch. Host work only (parses and checks the headers).
  static Result<size_t> workspace_bytes(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                                        const BatchDecodeOptions& options);
  // Caller-provided device memory (at least workspace_bytes of the batches to come, 256-byte aligned
  // is best): decode() and the restores then allocate nothing on the device; a batch that needs more
  // fails with OUT_OF_MEMORY. nullptr returns to buffers the decoder owns. Waits for work still
  // running in the previous buffers; the memory must outlive its use.
  Status set_workspace(void* workspace_dev, size_t bytes);

  // Waits for whatever the last decode left pending (defer_status, overlap_exact) and reports every
  // chunk status: CORRUPT / CHECKSUM_MISMATCH naming the sequence and chunk. OK when nothing is pending.
  Status status();

  // After a decode with overlap_exact: waits for the exact chunks and returns their status (CORRUPT /
  // CHECKSUM_MISMATCH naming the chunk; tensors restored from a failed batch are not valid). OK when
  // nothing is pending.
  Status exact_status();

  int n_sequences() const;
  // Shape of sequence `seq`: layers, KV heads, head_dim, tokens (all from its header).
  ModelShape shape(int seq) const;
  int64_t n_tokens(int seq) const;
  BatchDecodeTimes last_times() const;

  // Writes layer `layer` of sequence `seq` to k_dev and v_dev, each [n_kv_heads][n_tokens][head_dim]
  // contiguous, of `type`. Asynchronous on `cuda_stream`.
  Status restore_layer(const DeviceCalibration& dcal, int seq, int layer, void* k_dev, void* v_dev, ElementType type,
                       void* cuda_stream);
  // Writes layer `layer` of sequence `seq` into a vLLM-style paged layer cache: `layer_cache` is
  // [num_blocks][2][block_size][n_kv_heads][head_dim] of `type` (index 0 keys, 1 values); token t goes
  // to block block_table_dev[t / block_size], slot t % block_size. block_table_dev is device int32 with
  // at least ceil(n_tokens(seq) / block_size) entries, each < num_blocks (not checked on the device).
  // Asynchronous on `cuda_stream`; same values as restore_layer.
  Status restore_layer_paged(const DeviceCalibration& dcal, int seq, int layer, void* layer_cache,
                             const int32_t* block_table_dev, int block_size, ElementType type, void* cuda_stream);
  // All layers in order, layer 0 first; after layer l, records layer_events[l] (a cudaEvent_t; null
  // entries or a null array: none), so that attention on layer l can wait on it while later layers
  // are still being reconstructed. With BatchDecodeOptions::layers_per_gemm > 1 (bf16 restores),
  // layers are reconstructed and become ready in groups of that many.
  Status restore_all(const DeviceCalibration& dcal, int seq, void* const* k_layers, void* const* v_layers,
                     ElementType type, void* cuda_stream, void* const* layer_events);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------
// Whole-cache helpers (host memory in and out), for tools
// ---------------------------------------------------------------------------------------------------

// Restores layers [first_layer, last_layer) of a container on the GPU with the fp32 path and returns
// them in host memory: the same KVCache kvtc::decode gives (metadata, exact tokens bit for bit, fp32
// values within fp32 rounding of the CPU decoder), with k and v holding only the selected layers
// (k[0] is first_layer). last_layer < 0 means all layers.
Result<KVCache> decode_on_gpu(const Calibration& cal, const uint8_t* bytes, size_t size_bytes, int first_layer = 0,
                              int last_layer = -1, const DecodeOptions& options = {});

// Compresses a host cache on the GPU and returns the container: what kvtc::encode gives, made on the
// device. Gather and RoPE removal, the projection (fp32 cuBLAS GEMM), quantisation and packing, and
// DEFLATE (Huffman-only, cuda/deflate_encode.cuh) all run there; the host plans the chunks and writes
// the header. The container has the CPU encoder's chunk table (the same chunks and token and component
// ranges; stored sizes differ, another DEFLATE encoder, and so may a codes chunk's layout, which follows
// the stored sizes by the CPU encoder's rule) and restores with every decoder.
// Exact tokens are bit for bit; given the same coefficients the codes are too, but the GPU's projection
// rounds differently from the CPU's in the last bits, so a coefficient on a quantisation boundary can
// take the neighbouring code: restored values agree with a CPU-encoded file's to quantisation noise.
// options: as for kvtc::encode (deflate_level and n_threads are ignored: the GPU encoder has one level);
// measure_error restores the container on the GPU to fill the report's per-layer errors. Errors: the
// CPU encoder's (INVALID_ARGUMENT for bad options or caches, MISMATCH for a calibration of another
// shape), StatusCode::kCuda without a device. Allocates device memory (about 2 x the cache in fp32,
// plus the coefficients) and uploads the calibration on every call; not for the hot path.
//
// projection: kFp32 (the default) keeps codes within the CPU encoder's up to last-bit rounding;
// kTf32 runs the projection GEMM on TF32 tensor cores (inputs rounded to 10-bit mantissas, fp32
// accumulation), about 9x faster, with the same restored error (measured within 1% on the reference
// caches) but codes that may differ from the CPU's by one level. kBf16 (BatchEncoder only;
// encode_on_gpu refuses it with UNSUPPORTED): the gathered vectors are rounded to bf16 and multiplied
// with the calibration's bf16 basis (DeviceCalibration::Options::bf16) on bf16 tensor cores, fp32
// accumulation: twice TF32's rate, the restored error measured in tests/test_cuda_batch_encode.cpp.
enum class EncodeProjection { kFp32, kTf32, kBf16 };
Result<EncodedCache> encode_on_gpu(const Calibration& cal, const KVCache& cache, const EncodeOptions& options,
                                   EncodeProjection projection = EncodeProjection::kFp32);

// ---------------------------------------------------------------------------------------------------
// Batched encoding of caches held in device memory
// ---------------------------------------------------------------------------------------------------

// One sequence's cache in device memory. Either contiguous per layer (k_layers[l], v_layers[l], each
// [n_kv_heads][n_tokens][head_dim] of dtype) or vLLM's paged layout (paged_layers[l] is
// [num_blocks][2][block_size][n_kv_heads][head_dim] of dtype, index 0 keys, 1 values; token t lies in
// block block_table_dev[t / block_size], slot t % block_size; block_table_dev is device int32 with at
// least ceil(n_tokens / block_size) entries, each < num_blocks: not checked on the device).
// Pointers are device pointers and must stay valid until the batch has run.
struct DeviceCacheView {
  ModelShape shape;
  DType dtype = DType::kBF16;
  int64_t n_tokens = 0;
  int64_t position_offset = 0;
  std::map<std::string, std::string> metadata;  // written to the header, as KVCache::metadata
  std::vector<const void*> k_layers, v_layers;  // contiguous, or:
  std::vector<const void*> paged_layers;
  const int32_t* block_table_dev = nullptr;
  int block_size = 0;
};

// Where the last BatchEncoder::encode spent its time: host_s on the host clock, from encode()'s start to
// its first device call (planning, header templates, job tables); the rest device time between CUDA
// events, in seconds. project_s covers every sequence's gather, projection GEMM, quantisation and
// packing; entropy_s both DEFLATE launches and the dense gate; assemble_s the containers' assembly and
// the statuses' copy to the host.
struct BatchEncodeTimes {
  double host_s = 0, upload_s = 0, project_s = 0, exact_s = 0, entropy_s = 0, assemble_s = 0, total_s = 0;
};

// Encodes many device caches per call into complete containers in device memory: what encode_on_gpu
// gives for the same cache values and options, byte for byte (same chunks, same GPU DEFLATE; the host
// plans the header and chunk table as a template, the device fills offsets, stored sizes, CRCs, the
// dense-or-aligned choice of codes chunks and the header CRC, and copies the chunks after the header).
// Exact tokens are the input's bits. dcal must hold fp32 bases (DeviceCalibration::Options::fp32).
//
//   kvtc::cuda::BatchEncoder enc;
//   auto ws = BatchEncoder::workspace_bytes(dcal, views, opt);      // host work only
//   auto bounds = BatchEncoder::container_bound_bytes(dcal, views, opt);
//   enc.set_workspace(ws_dev, *ws);                                 // then no device allocation
//   enc.encode(dcal, views, opt, out_dev, offsets, sizes_dev, stream);  // asynchronous
//   ... enc.status();                                               // waits, reports errors
//
// encode() plans on the host, uploads one table (from pinned host memory), queues gather + RoPE
// removal, the fp32 cuBLAS projection, quantisation, packing, DEFLATE and the assembly on `stream`,
// and returns without waiting for the device. Sequence i's container goes to out_dev + out_offsets[i]
// (room for container_bound_bytes()[i] bytes), its size to sizes_dev[i] (0 on failure). Host-side
// errors (bad views or options: INVALID_ARGUMENT; a calibration of another shape: MISMATCH; too small a
// workspace: OUT_OF_MEMORY) are returned by encode() before anything is queued. Consecutive batches
// on one encoder are ordered on the device (a batch waits for the previous one's workspace).
// Threading: one BatchEncoder per host thread. Options as for encode_on_gpu (measure_error is ignored).
class BatchEncoder {
 public:
  BatchEncoder();
  ~BatchEncoder();
  BatchEncoder(BatchEncoder&&) noexcept;
  BatchEncoder& operator=(BatchEncoder&&) noexcept;

  // Device bytes encode() of these views needs (host work only).
  static Result<size_t> workspace_bytes(const DeviceCalibration& dcal, const std::vector<DeviceCacheView>& views,
                                        const EncodeOptions& options);
  // Per sequence, an upper bound of its container's size: the header plus every chunk's DEFLATE bound.
  static Result<std::vector<uint64_t>> container_bound_bytes(const DeviceCalibration& dcal,
                                                             const std::vector<DeviceCacheView>& views,
                                                             const EncodeOptions& options);
  // Caller-provided device memory (256-byte aligned is best) used by every later encode(); creates the
  // cuBLAS handle (the only device allocation). Waits for the previous batch.
  Status set_workspace(void* workspace_dev, size_t bytes);
  // The projection's math mode for the next encodes (as encode_on_gpu's; kFp32 by default): both give
  // byte-identical containers for kFp32 and kTf32. kBf16 is this encoder's alone and needs dcal's bf16
  // basis (encode() returns INVALID_ARGUMENT without it).
  void set_projection(EncodeProjection projection);
  Status encode(const DeviceCalibration& dcal, const std::vector<DeviceCacheView>& views, const EncodeOptions& options,
                uint8_t* out_dev, const std::vector<uint64_t>& out_offsets, uint64_t* sizes_dev, void* cuda_stream);
  // Waits for the last batch and reports its per-sequence statuses (StatusCode::kInternal naming the
  // sequence for a failed DEFLATE or assembly, kCuda for CUDA errors). OK when nothing was encoded.
  Status status();
  // The stages of the last batch; valid after status() returned OK (zeros before the first batch).
  BatchEncodeTimes last_times() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Restore timing of `containers` (decoded together as one batch) into device buffers this call owns:
// one warm-up, then `repeat` runs of decode() with `options` and restore_all of every sequence into
// `type` (kF32 needs options.keep_fp32, kBF16 options.keep_bf16); medians in seconds. FP8
// reconstruction (options.fp8_reconstruction, with its layers_per_gemm and fp8_fast_accum) needs
// dcal's FP8 basis. Allocates; not for the hot path.
struct RestoreTiming {
  int repeat = 0;
  double raw_bytes = 0;          // restored tensors at 16 bits per element, all sequences
  double file_bytes = 0;         // the containers
  double decode_wall_s = 0;      // decode(): host checks, upload, inflate, dequantise (host clock)
  double host_s = 0;             // decode()'s host work (BatchDecodeTimes::host_s)
  double upload_s = 0, inflate_s = 0, dequantize_s = 0, exact_s = 0;  // device stages (CUDA events)
  double fp8_s = 0;              // the E4M3 copies of FP8 reconstruction (CUDA events)
  double restore_s = 0;          // restore_all of every sequence (CUDA events)
  double first_layer_s = 0;      // restore start to sequence 0's layer 0 ready
  double total_wall_s = 0;       // decode() start to every layer restored (host clock)
};
Result<RestoreTiming> time_restore(const DeviceCalibration& dcal, const std::vector<ContainerView>& containers,
                                   int repeat, ElementType type, const BatchDecodeOptions& options);

}  // namespace kvtc::cuda
