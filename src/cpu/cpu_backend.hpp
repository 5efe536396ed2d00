// The CPU backend: OpenBLAS for the transforms, a thread per core over chunks for quantisation and
// DEFLATE (libdeflate).
#pragma once

#include <vector>

#include "core/backend.hpp"
#include "core/rope.hpp"
#include "core/token_vectors.hpp"

namespace kvtc {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  Result<EncodedCache> encode(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& options,
                              StageTimes* times) override;
  // The same from a view of caller memory (the KVCache overload is this over CacheView::of).
  Result<EncodedCache> encode_view(const CalibrationData& cal, const CacheView& cache, const EncodeOptions& options,
                                   StageTimes* times);
  Result<DecodedCoefficients> decode_coefficients(const CalibrationData& cal, const uint8_t* bytes, size_t size_bytes,
                                                  const DecodeOptions& options, StageTimes* times) override;
  Status restore_layer(const CalibrationData& cal, const DecodedCoefficients& dec, int layer, float* k, float* v,
                       int n_threads, StageTimes* times) const override;
};

// Coefficients [m][k] (token-major) of compressed tokens [t0, t0 + m) of one stream in the first k
// components of its basis: gather (RoPE removed from keys with `rope`), centre, sgemm.
std::vector<float> project_stream(const CalibrationData& cal, const CacheView& cache, Stream stream, int64_t t0,
                                  int64_t m, int64_t k, const RopeTable& rope, StageTimes& times);

// A chunk ready to be placed: its entry (offset still 0) and stored bytes.
struct PendingChunk {
  ChunkEntry entry;
  std::vector<uint8_t> stored;
};

// Codec 3 for one stream (encoder_ecsq.cpp): rate control over the calibration's ECSQ levels so that
// the stream's codes chunks take at most 2 * p * m / target_ratio - reserved_bytes bytes, then the
// chunks. With `classes` (m bytes, 0 or 1; format 4) class-1 tokens take a level options.high_rate_levels
// finer than the rest. Sets the header's stream allocation and appends the chunks (token blocks of
// options.chunk_tokens).
Status encode_stream_ecsq(const CalibrationData& cal, const CacheView& cache, Stream stream, int64_t t0, int64_t m,
                          const RopeTable& rope, const EncodeOptions& options, const uint8_t* classes,
                          double reserved_bytes, StreamAllocation& allocation, std::vector<PendingChunk>& chunks,
                          StageTimes& times);

// Per-layer errors of a restored cache against the original, over the compressed tokens
// [token_begin, token_end); attention errors when the original has q tensors.
std::vector<LayerError> measure_layer_errors(const KVCache& original, const KVCache& restored, int64_t token_begin,
                                             int64_t token_end, double* k_relative_mse, double* v_relative_mse);
// The same with the original as a view; attention errors use the q tensors of `queries` when it is not
// null and has them.
std::vector<LayerError> measure_layer_errors(const CacheView& original, const KVCache* queries,
                                             const KVCache& restored, int64_t token_begin, int64_t token_end,
                                             double* k_relative_mse, double* v_relative_mse);

}  // namespace kvtc
