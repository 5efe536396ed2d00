// Shared by the benchmarks: the real caches and a calibration made from them (once per process), and the
// Gaussian rate-distortion bound the quality and rate-distortion tables compare against.
#pragma once

#include <string>
#include <vector>

#include "core/calibration_data.hpp"
#include "kvtc/kvtc.hpp"

namespace kvtc::bench {

// ../shared/kvcache beside the checkout (KVTC_SHARED_DIR overrides).
std::string shared_kvcache(const std::string& name);
std::vector<std::string> calibration_files();  // calib-{prose,code}-{1,2}.safetensors
std::vector<std::string> test_files();         // test-prose, test-code
const Calibration& real_calibration();         // calibrated on calibration_files(), ratios 8..64
const KVCache& real_cache(const std::string& path);

// Reverse water-filling: distortion at `bits` per token for independent Gaussians of these variances.
double water_fill(const std::vector<double>& var, double bits);

// The energy of one stream's compressed tokens (sink and window excluded) of some caches, in a calibration's
// basis (RoPE removed from keys), per token.
struct Energy {
  std::vector<double> coef_var;  // second moment of each coefficient over test tokens
  double residual = 0;           // energy outside the basis
  double total = 0;              // E |x|^2 (not centred): the relative-error denominator
};
// Energy of stream 0 (keys) or 1 (values) of `caches` in `cal`'s basis.
Energy test_energy(const CalibrationData& cal, int stream, const std::vector<const KVCache*>& caches);

// Pools relative MSE over caches: adds cache `c`'s relative MSE of keys (s = 0) and values (s = 1) from its
// encode report `r`, weighted by that stream's energy over the compressed tokens, to num[s], and the energy to
// den[s]; num[s] / den[s] is then the pooled relative MSE.
void pool_relative_mse(const Calibration& cal, const KVCache& c, const EncodeReport& r, double num[2], double den[2]);

}  // namespace kvtc::bench
