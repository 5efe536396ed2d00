// libFuzzer target: container bytes -> structure check, inspect, fast and reference decoders.
// The two decoders must agree on accepting an input.
#include <cstdint>
#include <cstdlib>

#include "core/reference_decoder.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtc;
  (void)inspect_json(data, size);
  const Calibration& cal = fuzz::fuzz_calibration();
  DecodeOptions o;
  o.n_threads = 1;
  auto fast = decode(cal, data, size, o);
  auto ref = reference_decode(cal.data(), data, size);
  if (fast.is_ok() != ref.is_ok()) std::abort();
  return 0;
}
