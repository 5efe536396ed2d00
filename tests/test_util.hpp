// Shared helpers for the test suite: where the data lives and small synthetic inputs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/allocation.hpp"
#include "core/calibration_data.hpp"
#include "core/token_vectors.hpp"
#include "format/container.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/kvtc.hpp"
#include "temp_dir.hpp"
#include "test_fixture_file.hpp"

namespace kvtc::testing {

// ../shared beside the checkout (read-only in CI) and the repo's own data/ folder.
std::string shared_dir();
std::string repo_data(const std::string& name);  // <repo>/data/<name>
std::string shared_kvcache(const std::string& name);  // ../shared/kvcache/<name>
// Runs `command` through the shell with stdout and stderr captured (in a fresh temporary folder); the
// exit status, or -1 when it did not exit normally.
int run_command(const std::string& command, std::string* out, std::string* err);

// The cache data/<name> of the repo, read once per process (a failed read fails the current test and
// gives an empty cache).
const KVCache& repo_cache(const std::string& name);

// A view of tokens [a, b) of a cache's own tensors, at their true positions (position_offset + a): a
// block for block mode.
CacheView block_view(const KVCache& c, int64_t a, int64_t b);

// A random cache with a low-rank, correlated structure (like real KV), RoPE applied to keys.
// position_offset: RoPE position of token 0 (keys are rotated accordingly).
KVCache synthetic_cache(const ModelShape& shape, int64_t n_tokens, uint64_t seed, DType dtype = DType::kF32,
                        int64_t position_offset = 0);

// Hand-made calibrations for codec tests (CPU and GPU): groups of every kind on a random basis.
Group group(uint32_t first, uint32_t n, GroupKind kind, int width);
// Every kind and width 1..8, a dropped group inside, fp16 first: 64 kept components.
std::vector<Group> all_kinds_groups();
// int 4 x 16, fp16 x 4, then int-affine 2 up to `kept` components.
std::vector<Group> simple_groups(uint32_t kept);
// Rows of a random orthonormal basis (modified Gram-Schmidt, twice, on Gaussian rows).
std::vector<float> random_orthonormal(int64_t rank, int64_t p, uint64_t seed);
// An allocation whose budget is exactly the bits its groups use.
Allocation fixed_allocation(double ratio, std::vector<Group> groups);
// One stream: the mean of the cache's own vectors (RoPE removed from keys), `rank` rows of
// random_orthonormal(seed) with unit variances, and the given allocations.
StreamCalibration synthetic_stream(const KVCache& cache, Stream stream, int64_t rank, uint64_t seed,
                                   std::vector<Allocation> allocations);
// A calibration for the cache's shape: synthetic_stream for keys (seed 11) and values (seed 12) with
// their allocations (one per ratio, in the order of `ratios`), and n_sink and n_window exact tokens.
CalibrationData synthetic_calibration(const KVCache& cache, int64_t rank, std::vector<double> ratios,
                                      std::vector<Allocation> key_allocations,
                                      std::vector<Allocation> value_allocations, int n_sink, int n_window);
// synthetic_calibration at ratios 8 and 20, with groups of every kind in each stream: keys
// all_kinds_groups() at 8 and simple_groups(40) at 20, values simple_groups(52) and all_kinds_groups().
CalibrationData calibration_8_20(const KVCache& cache, int64_t rank, int n_sink, int n_window);

// The calibration of data/small-calib.safetensors at ratios 8, 16, 20, 32, with the ECSQ models (codec 3)
// calibrate() learns by default (one cache: folds are its two halves): about 10 s at -O3, many more
// under the sanitizers. Made once per process: read from small_calibration_fixture_path() while
// fixture_is_fresh() (test_fixture_file.hpp: ctest's TestFixtures.SmallCalibration writes it first),
// else computed here.
const CalibrationData& small_calibration_with_ecsq();
CalibrationData compute_small_calibration_with_ecsq();  // always computes (throws if calibrate() fails)

// Squared error of a restored cache `b` against the original `a` over tokens [t0, t1) of one stream
// (keys or values), every layer and head, and the squared norm of `a` there: what the encoder's
// relative MSE reports (error / norm).
struct SquaredError {
  double error = 0, norm = 0;
  double relative() const { return error / norm; }
};
SquaredError squared_error(const KVCache& a, const KVCache& b, bool keys, int64_t t0, int64_t t1);

// Coefficients of tokens [t0, t0 + n) of a cache in a stream's basis, [n][rank] (RoPE removed from keys,
// mean subtracted), in double precision: what tests learn ECSQ models from.
std::vector<float> project_tokens(const KVCache& cache, const StreamCalibration& sc, Stream stream, int64_t t0,
                                  int64_t n);
// Gives both streams of `cal` an ECSQ model (codec 3) learnt from random Laplacian coefficients with
// each component's spread in `cache` (n_samples per component, seeded), with rare huge outliers (about
// 1 in 300, 20 to 80 times the spread) so that the finer levels' tables reach into bucket symbols.
void add_synthetic_ecsq_models(CalibrationData& cal, const KVCache& cache, int64_t n_samples, uint64_t seed);

// A 2 x 2 x 16 synthetic cache of n_tokens (at least 52) whose tokens 50 (x 1e4: codes beyond every
// table's alphabet, so escapes) and 51 (x 40: bucket symbols) are made huge, and its calibration: a
// random basis (calibration_8_20, 4 sinks, window 16) with ECSQ models learnt from Laplacian
// coefficients (add_synthetic_ecsq_models, n_samples 3000, seed + 1). Codec 3's raw-bit rules get
// exercised by any encode of it.
struct OutlierCase {
  KVCache cache;
  CalibrationData cal;
};
OutlierCase outlier_case(int64_t n_tokens, uint64_t seed);

// Robustness tests (bad containers): decodes `bytes` with the fast decoder (options `o`) and the reference
// decoder, fails the test if they disagree on whether the input is acceptable, and returns the fast
// decoder's status code.
StatusCode decode_code_both(const Calibration& cal, const std::vector<uint8_t>& bytes,
                            const DecodeOptions& o = {});
// Decodes prefixes of `full` with `decode_code` (every length below `dense`, then every `stride`-th) and
// fails at the first that is not rejected as kCorrupt or kChecksumMismatch.
void expect_truncations_rejected(const std::vector<uint8_t>& full,
                                 const std::function<StatusCode(const std::vector<uint8_t>&)>& decode_code,
                                 size_t dense = SIZE_MAX, size_t stride = 1);
// The container `full` with its header (the bytes before payload_offset) replaced by `header` serialised.
std::vector<uint8_t> with_header(const std::vector<uint8_t>& full, size_t payload_offset,
                                 const ContainerHeader& header);

// Every codec 3 codes chunk of `container` (core/ecsq_inspect.hpp) coded again by the CPU's rans_encode
// from its decoded symbols and runs gives its stored rANS bytes; returns how many chunks have more
// runs than components (format 4's class-1 runs), -1 if the chunks could not be read.
int64_t expect_codes_chunks_reencode(const CalibrationData& cal, const std::vector<uint8_t>& container,
                                     int expected_lanes = 0);

}  // namespace kvtc::testing
