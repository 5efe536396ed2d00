// Writes the seed corpora: containers made with the fuzz calibration at several ratios and chunk
// sizes, and calibration files. Run: make_seeds OUT_DIR  (OUT_DIR/container, OUT_DIR/calibration)
#include <cstdio>
#include <filesystem>

#include "fuzz_common.hpp"

int main(int argc, char** argv) {
  using namespace kvtc;
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUT_DIR\n");
    return 2;
  }
  const std::filesystem::path out(argv[1]);
  std::filesystem::create_directories(out / "container");
  std::filesystem::create_directories(out / "calibration");
  const Calibration& cal = fuzz::fuzz_calibration();
  int i = 0;
  for (double ratio : {8.0, 20.0, 40.0})
    for (int tokens : {140, 200}) {
      EncodeOptions o;
      o.target_ratio = ratio;
      o.chunk_tokens = 32;
      o.chunk_max_bytes = 256;
      o.measure_error = false;
      auto enc = encode(cal, fuzz::fuzz_cache(tokens, uint64_t(100 + i)), o);
      if (!enc.is_ok()) return 1;
      if (!write_bytes_atomic((out / "container" / ("seed-" + std::to_string(i++) + ".kvtc")).string(), enc->bytes).is_ok()) return 1;
    }
  auto bytes = cal.serialize();
  if (!bytes.is_ok() || !write_bytes_atomic((out / "calibration" / "seed-0.kvtcal").string(), *bytes).is_ok()) return 1;
  std::printf("wrote %d container seeds and 1 calibration seed to %s\n", i, argv[1]);
  return 0;
}
