// `kvtc eval` as users run it: the command line on the reference model, its JSON rows, the PNG plot
// drawn by gnuplot, and runs over different trials pooled by `kvtc eval-merge`. Runs the built `kvtc`
// binary (KVTC_CLI_PATH) on short contexts.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include <unistd.h>

#include "test_util.hpp"

namespace kvtc {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<uint8_t> read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

uint32_t be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }

TEST(CliEval, JsonRowsAndPlot) {
  const std::string model = testing::shared_dir() + "/models/kvtc-ref-26m";
  ASSERT_TRUE(fs::exists(model + "/config.json")) << "the reference model is missing at " << model;
  const fs::path dir = fs::temp_directory_path() / ("kvtc_cli_eval_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path json_path = dir / "eval.json", png_path = dir / "eval.png";
  // Two tasks, two baselines that need no calibration, two ratios: a 2 x 3 grid of panels is not
  // needed, one row of two panels is (480 x 360 pixels each).
  const std::string cmd = std::string(KVTC_CLI_PATH) + " eval --model " + model +
                          " --tasks passkey,fidelity --methods kivi,snapkv --ratios 4,8 --trials 2"
                          " --passkey-lengths 512 --contexts 512 --domains prose -j 2 --json-out " +
                          json_path.string() + " --plot " + png_path.string() + " > " + (dir / "stdout.txt").string() +
                          " 2> " + (dir / "stderr.txt").string();
  const int rc = std::system(cmd.c_str());
  const auto err = read_all(dir / "stderr.txt");
  ASSERT_EQ(rc, 0) << cmd << "\n" << std::string(err.begin(), err.end());

  // JSON: one object whose `results` rows carry the documented fields; `none` is always included.
  std::ifstream jf(json_path);
  ASSERT_TRUE(jf.good());
  const json j = json::parse(jf);
  ASSERT_TRUE(j.contains("results"));
  std::set<std::string> tasks, methods;
  for (const json& r : j["results"]) {
    for (const char* key : {"task", "method", "target_ratio", "achieved_ratio", "score", "ci95", "n"})
      ASSERT_TRUE(r.contains(key)) << key << " missing in " << r.dump();
    tasks.insert(r["task"].get<std::string>());
    methods.insert(r["method"].get<std::string>());
    const double score = r["score"], lo = r["ci95"][0], hi = r["ci95"][1];
    EXPECT_GE(score, 0.0);
    EXPECT_LE(score, 100.0);
    EXPECT_LE(lo, score + 1e-9);
    EXPECT_GE(hi, score - 1e-9);
    EXPECT_GT(r["n"].get<int>(), 0);
    if (r["method"] != "none") {
      EXPECT_GT(r["achieved_ratio"].get<double>(), 1.0) << r.dump();
    }
  }
  EXPECT_EQ(methods, (std::set<std::string>{"none", "kivi", "snapkv"}));
  EXPECT_EQ(tasks.size(), 2u) << "one passkey and one fidelity task";

  // PNG: signature, an IHDR of the size the layout asks for, and an image with content.
  const auto png = read_all(png_path);
  ASSERT_GT(png.size(), 5000u) << "plot too small to hold two panels";
  const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  ASSERT_TRUE(std::equal(sig, sig + 8, png.begin()));
  ASSERT_EQ(std::string(png.begin() + 12, png.begin() + 16), "IHDR");
  EXPECT_EQ(be32(png.data() + 16), 2u * 480);  // width: two panels
  EXPECT_EQ(be32(png.data() + 20), 360u);      // height: one row

  // A third trial run on its own (--first-trial 2) pools with the first two (eval-merge): three
  // trials per row, paired differences against none, and the same trials twice are refused.
  const fs::path third = dir / "third.json", merged = dir / "merged.json";
  const std::string run3 = std::string(KVTC_CLI_PATH) + " eval --model " + model +
                           " --tasks passkey,fidelity --methods kivi,snapkv --ratios 4,8 --trials 1 --first-trial 2"
                           " --passkey-lengths 512 --contexts 512 --domains prose --json-out " + third.string() +
                           " > /dev/null 2>&1";
  ASSERT_EQ(std::system(run3.c_str()), 0) << run3;
  const std::string merge = std::string(KVTC_CLI_PATH) + " eval-merge " + json_path.string() + " " + third.string() +
                            " --json-out " + merged.string() + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(merge.c_str()), 0) << merge;
  std::ifstream mf(merged);
  const json m = json::parse(mf);
  EXPECT_EQ(m["trials"].get<int>(), 3);
  ASSERT_EQ(m["results"].size(), j["results"].size());
  for (const json& r : m["results"]) {
    EXPECT_EQ(r["n"].get<int>(), 3) << r.dump();
    ASSERT_EQ(r["trials"].size(), 3u);
    for (int t = 0; t < 3; ++t) EXPECT_EQ(r["trials"][t]["trial"].get<int>(), t);
    EXPECT_EQ(r.contains("delta_ci95"), r["method"] != "none") << r.dump();
  }
  const std::string twice = std::string(KVTC_CLI_PATH) + " eval-merge " + json_path.string() + " " +
                            json_path.string() + " > /dev/null 2> " + (dir / "twice.txt").string();
  EXPECT_NE(std::system(twice.c_str()), 0);
  const auto twice_err = read_all(dir / "twice.txt");
  EXPECT_NE(std::string(twice_err.begin(), twice_err.end()).find("in both runs"), std::string::npos);

  // Runs calibrated with the same file pool even where it lay at different paths (the fingerprint
  // decides); runs with different calibrations are refused, whatever their paths.
  auto with_calibration = [&](const fs::path& from, const fs::path& to, const char* path, const char* fingerprint) {
    std::ifstream in(from);
    json doc = json::parse(in);
    doc["calibration"] = path;
    doc["calibration_fingerprint"] = fingerprint;
    std::ofstream(to) << doc.dump();
  };
  with_calibration(json_path, dir / "a.json", "/device/cal.kvtcal", "0123456789abcdef");
  with_calibration(third, dir / "b.json", "/here/cal.kvtcal", "0123456789abcdef");
  with_calibration(third, dir / "c.json", "/device/cal.kvtcal", "fedcba9876543210");
  const std::string same = std::string(KVTC_CLI_PATH) + " eval-merge " + (dir / "a.json").string() + " " +
                           (dir / "b.json").string() + " > /dev/null 2>&1";
  EXPECT_EQ(std::system(same.c_str()), 0) << same;
  const std::string other = std::string(KVTC_CLI_PATH) + " eval-merge " + (dir / "a.json").string() + " " +
                            (dir / "c.json").string() + " > /dev/null 2> " + (dir / "other.txt").string();
  EXPECT_NE(std::system(other.c_str()), 0);
  const auto other_err = read_all(dir / "other.txt");
  EXPECT_NE(std::string(other_err.begin(), other_err.end()).find("calibration_fingerprint"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvtc
