// kvtc/kvtc.hpp: KV cache transform coding, the C++ API.
//
// The whole job in four calls:
//   auto cal = kvtc::calibrate({"calib-1.safetensors", ...}, {});      // once per model
//   cal->save("model.kvtcal");
//   auto blob = kvtc::encode(*cal, cache, {.target_ratio = 20});       // a .kvtc container
//   auto restored = kvtc::decode(*cal, blob->bytes.data(), blob->bytes.size());
// or, to restore one layer at a time while attention runs on the earlier ones:
//   auto dec = kvtc::Decoder::open(*cal, bytes, size);                 // decodes all coefficients
//   for (int l = 0; l < n_layers; ++l) dec->restore_layer(l, &k, &v);  // reconstructs layer l only
//
// Threading: functions that take n_threads use that many worker threads (0: all cores); every object
// here may be used from several threads at once for reading (const calls), not for writing.
// Errors: every fallible call returns Status or Result; nothing throws across this boundary.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/cache.hpp"
#include "kvtc/status.hpp"

namespace kvtc {

struct CalibrationData;  // internal

// Reports progress of long calls: fraction in [0, 1] and a short label ("covariance", "allocation").
using ProgressFn = std::function<void(double fraction, const std::string& stage)>;

// ---------------------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------------------

struct CalibrateOptions {
  std::vector<double> ratios = {8, 16, 20, 32, 64};  // allocations stored for these targets
  int n_sink_tokens = 4;        // first tokens of every sequence: never compressed, not calibrated on
  int n_window_tokens = 128;    // newest tokens of every sequence: likewise
  // PCA path: exact covariance + LAPACK while p <= exact_max_features, else randomized SVD.
  int64_t exact_max_features = 16384;
  // Components kept: 0 means p on the exact path (at most tokens - 1), min(p, 8192) on the randomized.
  int64_t rank_cap = 0;
  int64_t max_allocation_samples = 4096;  // tokens used to measure quantisation error
  std::vector<int> group_sizes = {1, 4, 16, 32, 64, 128, 256, 512, 1024};  // each divides the next
  // Codec v3's quantiser (one ECSQ model per stream), learnt from the allocation sample's coefficients
  // taken out-of-fold on the exact PCA path (each token in the PCA of the calibration tokens of the
  // other fold: in-sample coefficients understate the trailing components' variance several times),
  // in-sample on the randomized path. The exact path then holds one more p x p covariance per stream
  // and solves two more eigenproblems per stream.
  bool learn_ecsq = true;
  bool ecsq_out_of_fold = true;  // false: in-sample statistics, and no extra covariance (for comparisons)
  int ecsq_prob_bits = 10;  // precision of the ECSQ rANS tables, 9..15
  int n_threads = 0;
  ProgressFn progress;
};

// Summary of an allocation, for reports and `kvtc inspect`.
struct GroupSummary {
  uint32_t first_component, n_components;
  std::string kind;  // "int", "int-affine", "fp16", "dropped"
  int width_bits;
};
struct AllocationSummary {
  double target_ratio;
  int64_t budget_bits_per_token, bits_per_token, kept_components;
  double predicted_relative_error;  // predicted MSE / mean squared norm of the calibration vectors
  std::vector<GroupSummary> groups;
};

// A model's calibration: mean and PCA basis for keys and values, and bit allocations per ratio.
// Cheap to copy (shared, immutable).
class Calibration {
 public:
  static Result<Calibration> load(const std::string& path);
  static Result<Calibration> parse(const uint8_t* bytes, size_t size_bytes);
  Status save(const std::string& path) const;  // atomic (temporary file, then rename)
  Result<std::vector<uint8_t>> serialize() const;

  const ModelShape& shape() const;
  const std::string& model_name() const;
  uint64_t fingerprint() const;          // identity of shape + means + bases
  std::vector<double> ratios() const;    // calibrated targets
  int64_t n_calibration_tokens() const;
  int n_sink_tokens() const;
  int n_window_tokens() const;
  int64_t rank(bool keys) const;
  // The stored allocation for a calibrated ratio, or one planned now from the stored distortion
  // measurements for any other ratio >= 1.
  Result<AllocationSummary> plan(double ratio, bool keys) const;

  const CalibrationData& data() const { return *data_; }
  explicit Calibration(std::shared_ptr<const CalibrationData> d) : data_(std::move(d)) {}

 private:
  std::shared_ptr<const CalibrationData> data_;
};

// Calibrates from cache files (streamed: memory is bounded by p^2 on the exact path and p * rank on the
// randomized one, never by the number of tokens). All files must share one model shape.
Result<Calibration> calibrate(const std::vector<std::string>& cache_paths, const CalibrateOptions& options);

// Streaming calibration from caches made in memory (the engine feeds it as it runs). Exact PCA path
// only (p <= exact_max_features); the randomized path needs several passes and takes files.
class CalibrationBuilder {
 public:
  static Result<CalibrationBuilder> create(const ModelShape& shape, const std::string& model_name,
                                           const CalibrateOptions& options);
  Status add(const KVCache& cache);
  Result<Calibration> finish();
  ~CalibrationBuilder();
  CalibrationBuilder(CalibrationBuilder&&) noexcept;
  CalibrationBuilder& operator=(CalibrationBuilder&&) noexcept;

 private:
  struct Impl;
  explicit CalibrationBuilder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------
// Encoding and decoding
// ---------------------------------------------------------------------------------------------------

struct EncodeOptions {
  // Codec 2 (format version 2): fixed-width groups with per-token scales, DEFLATE; target_ratio bounds
  // the bits per token before entropy coding, 16 * p / target_ratio. Codec 3 (format version 3,
  // docs/FORMAT.md section 9): entropy-constrained scalar quantisation with the calibration's static
  // rANS tables (calibration format 2); target_ratio bounds the stored bytes of each stream's compressed
  // tokens, at most 2 * p * tokens / target_ratio, by rate control over the calibration's levels.
  // The CUDA backend encodes codec 2 only and decodes both (docs/CUDA.md says how far its codec 3
  // decoder is tested).
  int codec = 2;
  int rans_lanes = 32;          // codec 3: interleaved rANS states per chunk, 1..64 (32: one per GPU warp thread)
  double target_ratio = 20.0;
  int deflate_level = 6;        // libdeflate level 1..12
  // Tokens per block of coefficient chunks; lowered (to 16 at least) where a block's side information
  // would exceed chunk_max_bytes, so that no chunk is a long serial stream for a GPU warp.
  int chunk_tokens = 256;
  // Raw bytes per codes chunk before DEFLATE: smaller chunks adapt Huffman tables to fewer components
  // and give GPUs more independent work; 16 KiB measured best on the reference caches (bench/RESULTS.md).
  int64_t chunk_max_bytes = 16 * 1024;
  // Tokens kept exact at the start (attention sinks) and at the end (the recent window); -1 takes the
  // calibration's counts (n_sink_tokens, n_window_tokens). Block mode, for engines that cache prefixes
  // in fixed blocks: a view of tokens [a, b) of a sequence with position_offset = a, encoded with
  // exact_tail_tokens = 0 and exact_head_tokens = 0 (or -1 for the block that holds position 0), stays
  // valid for every later request that shares the prefix.
  int exact_head_tokens = -1;
  int exact_tail_tokens = -1;
  // Token-adaptive rate (codec 3 only; container format 4, docs/FORMAT.md section 10): an importance
  // per token of the cache (higher: attention needs it more; e.g. attention_importance() below, or the
  // attention a serving engine's prefill paid each token). The high_rate_fraction most important
  // compressed tokens are coded at an ECSQ level high_rate_levels finer than the rest (32: about twice
  // the bits), the rest at the level rate control picks so that the target ratio still holds. Empty:
  // every token alike (format 3). On SmolLM2 this cut the KL divergence from the uncompressed model by
  // a third at 8-16x (bench/RESULTS.md, "Token-adaptive rate").
  std::vector<float> token_importance;
  double high_rate_fraction = 0.25;  // (0, 1)
  int high_rate_levels = 32;         // 1..256
  int n_threads = 0;
  bool measure_error = true;    // fill EncodeReport's per-layer errors (costs one decode)
  ProgressFn progress;
};

// What an encode achieved. "Raw" means the cache at 16 bits per element (K and V).
struct LayerError {
  double k_relative_mse = 0, v_relative_mse = 0;  // sum |x - x'|^2 / sum |x|^2 over compressed tokens
  double k_cosine = 0, v_cosine = 0;              // mean per-token-per-head cosine similarity
  double attention_relative_error = 0;        // |o - o'|^2 / |o|^2 of attention outputs (-1: no q)
};
struct EncodeReport {
  int64_t n_tokens = 0, n_compressed_tokens = 0, n_exact_tokens = 0;
  int64_t raw_bytes = 0;                 // all tokens at 16 bits
  int64_t file_bytes = 0;                // the whole container
  int64_t compressed_payload_bytes = 0;  // coefficient chunks after DEFLATE (compressed tokens alone)
  int64_t nominal_payload_bytes = 0;     // the same before DEFLATE: allocation bits * tokens / 8 (0: codec 3)
  double ratio_compressed_tokens = 0;    // raw bytes of compressed tokens / compressed_payload_bytes
  double ratio_nominal = 0;              // raw bytes of compressed tokens / nominal_payload_bytes
  double ratio_file = 0;                 // raw_bytes / file_bytes
  double deflate_gain = 0;               // nominal_payload_bytes / compressed_payload_bytes
  double bytes_per_token = 0;            // file_bytes / n_tokens
  double k_relative_mse = 0, v_relative_mse = 0;  // over all layers
  std::vector<LayerError> layers;
  double seconds = 0;
  // The codec that wrote the container, and for codec 3 the ECSQ level rate control chose for keys and
  // values ([0] K, [1] V; -1 with codec 2), so that callers can report them without parsing the header.
  int codec = 2;
  int ecsq_level[2] = {-1, -1};
  // With token-adaptive rate, the level of the high-rate tokens (-1 without) and how many there are.
  int ecsq_level_high[2] = {-1, -1};
  int64_t n_high_rate_tokens = 0;
};

struct EncodedCache {
  std::vector<uint8_t> bytes;  // a complete container (docs/FORMAT.md)
  EncodeReport report;
};

Result<EncodedCache> encode(const Calibration& cal, const KVCache& cache, const EncodeOptions& options);
// The same from caller memory: K and V are read where they lie (bf16, fp16 or fp32, any strides), with
// no copy of the cache. The view's shape must be the calibration's. Per-layer attention errors need
// query vectors, which a view does not carry: they are reported as -1.
Result<EncodedCache> encode(const Calibration& cal, const CacheView& cache, const EncodeOptions& options);

// Token importance for token-adaptive rate from the cache's own query vectors (KVCache::q, the last
// n_query queries of the prefill, which `kvtc dump` stores), as SnapKV scores tokens: per layer and KV
// head, the softmax attention of each of those queries (every query head of the group, causal) summed,
// then max-pooled over 7 neighbouring tokens of [token_begin, token_end); each head's scores as shares
// of their sum there, summed over all layers and heads. Pass the range the encoder compresses (from the
// calibration's n_sink_tokens to n_tokens - n_window_tokens) so that sinks do not weigh the heads.
// One value per token of the cache, 0 outside the range; INVALID_ARGUMENT if the cache has no q.
Result<std::vector<float>> attention_importance(const KVCache& cache, int64_t token_begin, int64_t token_end);

// Upper bound of the container size for a cache of this shape and token count (any ratio).
int64_t compress_bound(const Calibration& cal, const KVCache& cache, const EncodeOptions& options);

struct DecodeOptions {
  int n_threads = 0;
  bool verify_checksums = true;
  ProgressFn progress;
};

// Restores the whole cache (all layers, RoPE re-applied, exact tokens bit for bit).
Result<KVCache> decode(const Calibration& cal, const uint8_t* bytes, size_t size_bytes,
                       const DecodeOptions& options = {});

// Layer-by-layer restore: open() checks the container against the calibration, inflates every chunk
// and dequantises the coefficients once; restore_layer() then reconstructs one layer with only that
// layer's basis columns.
class Decoder {
 public:
  static Result<Decoder> open(const Calibration& cal, const uint8_t* bytes, size_t size_bytes,
                              const DecodeOptions& options = {});
  // Writes layer `layer` as [n_kv_heads][n_tokens][head_dim] fp32 into k and v (resized).
  Status restore_layer(int layer, std::vector<float>* k, std::vector<float>* v) const;
  // Writes layer `layer` into caller memory: element (head, token, dim) of the views, converted to
  // element_dtype (round to nearest even). Rows of a view must not overlap. Thread-safe for distinct
  // outputs: several layers may restore at once.
  Status restore_layer_into(int layer, const MutableTensorView& k, const MutableTensorView& v,
                            DType element_dtype) const;
  int64_t n_tokens() const;
  int64_t position_offset() const;
  // A cache with metadata and no layer data filled yet, as the container describes it.
  const KVCache& skeleton() const;
  ~Decoder();
  Decoder(Decoder&&) noexcept;
  Decoder& operator=(Decoder&&) noexcept;

 private:
  struct Impl;
  explicit Decoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------
// Inspection
// ---------------------------------------------------------------------------------------------------

// Everything a container or calibration file holds, as JSON text (the same as `kvtc inspect --json`).
// Checks structure and checksums without needing the calibration.
Result<std::string> inspect_json(const uint8_t* bytes, size_t size_bytes);

// Whole-file helpers for containers: read, and write atomically (temporary file, then rename, so a
// failure never leaves a half-written file under `path`).
Result<std::vector<uint8_t>> read_bytes(const std::string& path);
Status write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes);

// Library version "major.minor.patch" and the container format version it writes.
const char* version_string();
uint32_t container_format_version();

}  // namespace kvtc
