// libFuzzer target: calibration-file bytes -> parser, and inspect.
#include <cstdint>

#include "kvtc/kvtc.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto cal = kvtc::Calibration::parse(data, size);
  if (cal.is_ok()) {
    (void)cal->plan(cal->ratios().empty() ? 10.0 : cal->ratios()[0], true);
    (void)cal->serialize();
  }
  (void)kvtc::inspect_json(data, size);
  return 0;
}
