// The CPU backend: OpenBLAS for the transforms, a thread per core over chunks for quantisation and
// DEFLATE (libdeflate).
#pragma once

#include "core/backend.hpp"

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
