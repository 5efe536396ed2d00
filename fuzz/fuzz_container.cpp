// libFuzzer target: container bytes -> structure check, inspect, fast and reference decoders.
// The two decoders must agree on accepting an input, and on an accepted codec 3 (ECSQ) stream they must
// agree on every coefficient bit for bit (docs/FORMAT.md section 9 fixes its binary32 arithmetic).
#include <cstdint>
#include <cstdlib>

#include "core/reference_decoder.hpp"
#include "cpu/cpu_backend.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtc;
  (void)inspect_json(data, size);
  const Calibration& cal = fuzz::fuzz_calibration();
  DecodeOptions o;
  o.n_threads = 1;
  auto fast = decode(cal, data, size, o);
  ReferenceCoefficients rc;
  auto ref = reference_decode(cal.data(), data, size, &rc);
  if (fast.is_ok() != ref.is_ok()) std::abort();
  if (!fast.is_ok()) return 0;
  CpuBackend cpu;
  auto coef = cpu.decode_coefficients(cal.data(), data, size, o, nullptr);
  if (!coef.is_ok()) std::abort();
  const ContainerHeader& h = coef->container.header;
  const int64_t m = int64_t(h.n_compressed_tokens());
  for (int s = 0; s < 2; ++s) {
    if (!h.streams[s].ecsq()) continue;  // codec 2's dequantisation is held to a tolerance in tests/test_codec.cpp
    const int64_t kept = h.streams[s].n_kept(), rank = h.streams[s].basis_rank;
    for (int64_t t = 0; t < m; ++t)
      for (int64_t j = 0; j < kept; ++j)
        if (rc.coef[s][size_t(t * rank + j)] != double(coef->coef[s][size_t(t * kept + j)])) std::abort();
  }
  return 0;
}
