// The interface every codec backend (CPU, CUDA) implements. Backends produce and consume the same
// container format, so a file written by one restores on the other.
#pragma once

#include <memory>
#include <vector>

#include "core/calibration_data.hpp"
#include "format/container.hpp"
#include "kvtc/kvtc.hpp"

namespace kvtc {

// Seconds spent per stage, summed over streams (for reports and benchmarks).
struct StageTimes {
  double gather_s = 0;     // collecting token vectors, RoPE removal/re-application, scatter
  double transform_s = 0;  // projection / reconstruction GEMMs
  double quantize_s = 0;   // quantise + pack, or unpack + dequantise
  double deflate_s = 0;    // DEFLATE / inflate (+ checksums)
  double exact_s = 0;      // exact-token chunks
  double total_s = 0;
};

// Coefficients of a decoded container, before reconstruction: what layer-by-layer restore needs.
struct DecodedCoefficients {
  ParsedContainer container;
  std::vector<float> coef[2];                    // per stream [M][n_kept], token-major
  std::vector<std::vector<float>> exact[2][2];   // [stream][head=0 / tail=1][layer]: [H][n][D] fp32
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual Result<EncodedCache> encode(const CalibrationData& cal, const KVCache& cache, const EncodeOptions& options,
                                      StageTimes* times) = 0;
  virtual Result<DecodedCoefficients> decode_coefficients(const CalibrationData& cal, const uint8_t* bytes,
                                                          size_t size_bytes, const DecodeOptions& options,
                                                          StageTimes* times) = 0;
  // Reconstructs layer `layer` into k, v as [n_kv_heads][n_tokens][head_dim] fp32.
  virtual Status restore_layer(const CalibrationData& cal, const DecodedCoefficients& dec, int layer, float* k,
                               float* v, int n_threads, StageTimes* times) const = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

// The allocation to use for a ratio: the stored one when the ratio was calibrated, else planned now
// from the stored distortion table.
Result<Allocation> allocation_for_ratio(const CalibrationData& cal, int stream, double ratio);

// Tokens kept exact at the start (sinks) and the end (recent window) of an encode: the calibration's
// counts unless the options set them, never more than the cache holds.
struct ExactTokens {
  int64_t head = 0, tail = 0;
};
ExactTokens exact_tokens(const CalibrationData& cal, int64_t n_tokens, const EncodeOptions& options);

// Checks that a container belongs to this calibration (fingerprint, shape, ranks).
Status check_container_matches(const CalibrationData& cal, const ContainerHeader& header);

}  // namespace kvtc
