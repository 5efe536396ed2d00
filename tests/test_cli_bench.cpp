// `kvtc bench` (tools/kvtc/cmd_bench.cpp) as users run it: the CPU timing of a codec 3 container of
// the reference model's real cache, and the rules of the GPU options, which the command line checks
// before any device work (so they hold on machines without a GPU too). The GPU timing itself runs
// through cuda::time_restore, which test_cuda_fp8 checks on a device.
#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "kvtc/kvtc.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

using json = nlohmann::json;

int run_cli(const std::string& args, std::string* out, std::string* err) {
  return testing::run_command(std::string(KVTC_CLI_PATH) + " " + args, out, err);
}

// A calibration file and a codec 3 container of data/small-test.safetensors at 16x, in a fresh folder.
struct Files {
  std::string cal, container;
};
Files write_files() {
  const std::string dir = testing::temp_dir();
  Files f{dir + "/ecsq.kvtcal", dir + "/c3.kvtc"};
  const Calibration cal(std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq()));
  EXPECT_TRUE(cal.save(f.cal).is_ok());
  EncodeOptions o;
  o.codec = 3;
  o.target_ratio = 16;
  o.measure_error = false;
  auto enc = encode(cal, testing::repo_cache("small-test.safetensors"), o);
  EXPECT_TRUE(enc.is_ok()) << enc.status().to_string();
  if (enc.is_ok()) {
    EXPECT_TRUE(write_bytes_atomic(f.container, enc->bytes).is_ok());
  }
  return f;
}

TEST(CliBench, CpuTimesARestore) {
  const Files f = write_files();
  std::string o, e;
  ASSERT_EQ(run_cli("bench --device cpu --repeat 2 -j 1 -c " + f.cal + " " + f.container, &o, &e), 0) << e;
  const json r = json::parse(o);
  EXPECT_EQ(r["device"], "cpu");
  EXPECT_EQ(r["repeat"], 2);
  EXPECT_GT(r["file_bytes"].get<double>(), 0);
  EXPECT_GT(r["decode_s"].get<double>(), 0);
  EXPECT_GT(r["restore_s"].get<double>(), 0);
}

// Each refusal names the option at fault (CLI11's messages) and exits non-zero before anything is timed.
TEST(CliBench, RefusesGpuOptionsThatDoNotGoTogether) {
  const Files f = write_files();
  const std::string files = " -c " + f.cal + " " + f.container;
  struct Case {
    std::string args, names;
  };
  for (const Case& c : {Case{"--fp8-fast-accum", "--fp8-fast-accum requires --fp8"}, Case{"--fp8 --fp32", "excludes"},
                        Case{"--layers-per-gemm 0", "--layers-per-gemm: Value 0 not in range"},
                        Case{"--layers-per-gemm x", "--layers-per-gemm: Value x not in range"}}) {
    SCOPED_TRACE(c.args);
    std::string o, e;
    EXPECT_NE(run_cli("bench --device cuda " + c.args + files, &o, &e), 0) << o;
    EXPECT_NE(e.find(c.names), std::string::npos) << e;
    EXPECT_EQ(o.find("\"device\""), std::string::npos) << o;
  }
}

// `bench` is a command of every build: without the CUDA backend, --device cuda says so and exits non-zero.
TEST(CliBench, CudaWithoutTheBackendSaysSo) {
#ifdef KVTC_WITH_CUDA
  GTEST_SKIP() << "this build has the CUDA backend (test_cuda_fp8 times a restore on a device)";
#else
  const Files f = write_files();
  std::string o, e;
  EXPECT_NE(run_cli("bench --device cuda -c " + f.cal + " " + f.container, &o, &e), 0) << o;
  EXPECT_NE(e.find("built without the CUDA backend"), std::string::npos) << e;
  EXPECT_EQ(o.find("\"device\""), std::string::npos) << o;
#endif
}

}  // namespace
}  // namespace kvtc
