// Codec 3 through every surface but Python (tests/python/test_package.py): the encode report, inspect
// (format 3 fields, format 2 unchanged), the C API's codec and rans_lanes params, and the CLI's
// --codec / --rans-lanes flags and inspect output, on the calibration calibrate() makes with its ECSQ
// models (test_util: small_calibration_with_ecsq), saved to a .kvtcal where the CLI reads one.
#include <gtest/gtest.h>

#include <cmath>

#include <array>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "kvtc/kvtc.h"
#include "kvtc/kvtc.hpp"
#include "lib/c_api_internal.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

using nlohmann::json;
using testing::repo_data;

const Calibration& cal3() {
  static const Calibration cal(std::make_shared<CalibrationData>(testing::small_calibration_with_ecsq()));
  return cal;
}

const KVCache& cache() {
  static const KVCache c = [] {
    auto r = read_cache(repo_data("small-test.safetensors"));
    if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
    return std::move(r).value();
  }();
  return c;
}

EncodedCache encode_or_die(int codec, int lanes = 32) {
  EncodeOptions o;
  o.codec = codec;
  o.rans_lanes = lanes;
  o.target_ratio = 16;
  o.measure_error = false;
  auto r = encode(cal3(), cache(), o);
  if (!r.is_ok()) throw std::runtime_error(r.status().to_string());
  return std::move(r).value();
}

json inspect(const std::vector<uint8_t>& bytes) {
  auto text = inspect_json(bytes.data(), bytes.size());
  EXPECT_TRUE(text.is_ok()) << text.status().to_string();
  return json::parse(text.is_ok() ? *text : "{}");
}

TEST(CodecV3Surfaces, ReportNamesCodecAndLevels) {
  const EncodedCache v2 = encode_or_die(2);
  EXPECT_EQ(v2.report.codec, 2);
  EXPECT_EQ(v2.report.ecsq_level[0], -1);
  EXPECT_EQ(v2.report.ecsq_level[1], -1);
  const EncodedCache v3 = encode_or_die(3);
  EXPECT_EQ(v3.report.codec, 3);
  EXPECT_GE(v3.report.ecsq_level[0], 0);
  EXPECT_GE(v3.report.ecsq_level[1], 0);
}

TEST(CodecV3Surfaces, InspectShowsEcsqFields) {
  const EncodedCache v3 = encode_or_die(3);
  const json j = inspect(v3.bytes);
  EXPECT_EQ(j["format_version"], 3);
  const CalibrationData& d = cal3().data();
  for (int s = 0; s < 2; ++s) {
    const json& a = j["streams"][s == 0 ? "K" : "V"];
    const EcsqModel& m = (s == 0 ? d.key : d.value).ecsq;
    EXPECT_EQ(a["quantiser"], "ecsq");
    EXPECT_EQ(a["ecsq_level"], v3.report.ecsq_level[s]);
    EXPECT_EQ(a["ecsq_n_kept"], m.levels[size_t(v3.report.ecsq_level[s])].n_kept());
    EXPECT_EQ(a["kept_components"], a["ecsq_n_kept"]);
    char fp[17];
    std::snprintf(fp, sizeof fp, "%016llx", static_cast<unsigned long long>(m.fingerprint));
    EXPECT_EQ(a["ecsq_fingerprint"], fp);
  }
  int rans = 0;
  for (const json& c : j["chunks"]) {
    ASSERT_TRUE(c.contains("coder"));
    if (c["kind"] == "codes") {
      EXPECT_EQ(c["coder"], "rans");
      ++rans;
    } else {
      EXPECT_EQ(c["coder"], "deflate");
    }
  }
  EXPECT_GT(rans, 0);

  // Format 2 output keeps its keys: no quantiser, ECSQ or coder fields.
  const json j2 = inspect(encode_or_die(2).bytes);
  EXPECT_EQ(j2["format_version"], 2);
  EXPECT_FALSE(j2["streams"]["K"].contains("quantiser"));
  EXPECT_FALSE(j2["streams"]["K"].contains("ecsq_level"));
  EXPECT_FALSE(j2["chunks"][0].contains("coder"));
}

// Whether a calibration file keeps the ECSQ models (calibration format 2 sections) once saved and
// loaded: not yet while calibrate's side of codec 3 is being written.
bool files_keep_models(const std::string& path) {
  auto loaded = Calibration::load(path);
  return loaded.is_ok() && !loaded->data().key.ecsq.empty() && !loaded->data().value.ecsq.empty();
}

// The C API's view of a fp32 cache, contiguous [heads][tokens][dim] per layer.
struct CView {
  kvtc_cache_view view{};
  std::vector<const void*> k, v;
};
CView c_view(const KVCache& c) {
  CView m;
  for (int l = 0; l < c.shape.n_layers; ++l) {
    m.k.push_back(c.k[size_t(l)].data());
    m.v.push_back(c.v[size_t(l)].data());
  }
  m.view.struct_size = sizeof m.view;
  m.view.n_layers = c.shape.n_layers;
  m.view.n_kv_heads = c.shape.n_kv_heads;
  m.view.head_dim = c.shape.head_dim;
  m.view.n_tokens = c.n_tokens;
  m.view.position_offset = c.position_offset;
  m.view.element_dtype = KVTC_F32;
  m.view.dtype = KVTC_F32;
  m.view.keys = m.k.data();
  m.view.values = m.v.data();
  m.view.head_stride = c.n_tokens * c.shape.head_dim;
  m.view.token_stride = c.shape.head_dim;
  return m;
}

TEST(CodecV3Surfaces, CApiCodecParams) {
  // The handle wraps the in-memory calibration (files round-trip it: CliCompressCodec3).
  kvtc_calibration* cal = new kvtc_calibration{cal3()};
  std::unique_ptr<kvtc_calibration, void (*)(kvtc_calibration*)> own(cal, kvtc_calibration_free);
  CView m = c_view(cache());
  auto compress = [&](const kvtc_compress_params& p, std::vector<uint8_t>* out) {
    uint8_t* buf = nullptr;
    size_t size = 0;
    const kvtc_status st = kvtc_compress_view(cal, &m.view, &p, &buf, &size, nullptr);
    if (st == KVTC_OK) out->assign(buf, buf + size);
    kvtc_buffer_free(buf);
    return st;
  };
  kvtc_compress_params p;
  kvtc_compress_params_init(&p);
  EXPECT_EQ(p.codec, 2);
  EXPECT_EQ(p.rans_lanes, 32);
  p.target_ratio = 16;
  std::vector<uint8_t> v2, v3, v3_lanes;
  ASSERT_EQ(compress(p, &v2), KVTC_OK) << kvtc_last_error();
  EXPECT_EQ(inspect(v2)["format_version"], 2);
  p.codec = 3;
  ASSERT_EQ(compress(p, &v3), KVTC_OK) << kvtc_last_error();
  EXPECT_EQ(inspect(v3)["format_version"], 3);
  p.rans_lanes = 4;
  ASSERT_EQ(compress(p, &v3_lanes), KVTC_OK) << kvtc_last_error();
  EXPECT_NE(v3_lanes, v3);
  kvtc_cache* restored = nullptr;
  ASSERT_EQ(kvtc_decompress(cal, v3_lanes.data(), v3_lanes.size(), 0, &restored), KVTC_OK) << kvtc_last_error();
  kvtc_cache_free(restored);

  // An older caller's struct (ending where codec begins, its tail padding uninitialised): codec and
  // rans_lanes take their defaults, reserved0 is never read.
  std::vector<uint8_t> old;
  p.struct_size = offsetof(kvtc_compress_params, codec);
  p.reserved0 = int32_t(0xabababab);
  p.codec = 7;
  p.rans_lanes = 0;
  ASSERT_EQ(compress(p, &old), KVTC_OK) << kvtc_last_error();
  EXPECT_EQ(old, v2);
  // A struct ending inside rans_lanes: codec counts, rans_lanes keeps its default.
  p.struct_size = offsetof(kvtc_compress_params, rans_lanes) + 2;
  p.codec = 3;
  ASSERT_EQ(compress(p, &old), KVTC_OK) << kvtc_last_error();
  EXPECT_EQ(old, v3);

  // Values out of range, inside struct_size: refused by the encoder, naming the field.
  p.struct_size = sizeof p;
  p.codec = 4;
  p.rans_lanes = 32;
  EXPECT_EQ(compress(p, &old), KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("codec"), std::string::npos) << kvtc_last_error();
  p.codec = 3;
  p.rans_lanes = 65;
  EXPECT_EQ(compress(p, &old), KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("lanes"), std::string::npos) << kvtc_last_error();
}

// Runs the CLI with `args`; returns its exit code, its stdout in *out and stderr in *err.
int run_cli(const std::string& args, std::string* out, std::string* err) {
  return testing::run_command(std::string(KVTC_CLI_PATH) + " " + args, out, err);
}

TEST(CodecV3Surfaces, CliInspectFormat3) {
  const std::string dir = testing::temp_dir(), out = dir + "/c3.kvtc";
  ASSERT_TRUE(write_bytes_atomic(out, encode_or_die(3).bytes).is_ok());
  std::string o, e;
  ASSERT_EQ(run_cli("inspect --json " + out, &o, &e), 0) << e;
  const json ins = json::parse(o);
  EXPECT_EQ(ins["streams"]["K"]["quantiser"], "ecsq");
  ASSERT_EQ(run_cli("inspect " + out, &o, &e), 0) << e;
  EXPECT_NE(o.find("K: ECSQ level " + ins["streams"]["K"]["ecsq_level"].dump() + ", " +
                   ins["streams"]["K"]["ecsq_n_kept"].dump() + " kept components"), std::string::npos) << o;
  EXPECT_NE(o.find("model " + ins["streams"]["V"]["ecsq_fingerprint"].get<std::string>()), std::string::npos) << o;
  EXPECT_NE(o.find("   coder"), std::string::npos) << o;
  EXPECT_NE(o.find("   rans "), std::string::npos) << o;
  EXPECT_NE(o.find(" deflate "), std::string::npos) << o;  // exact chunks
}

TEST(CodecV3Surfaces, CliCompressCodec3) {
  const std::string dir = testing::temp_dir();
  const std::string cal = dir + "/ecsq.kvtcal", out = dir + "/c3.kvtc", in = repo_data("small-test.safetensors");
  ASSERT_TRUE(cal3().save(cal).is_ok());
  ASSERT_TRUE(files_keep_models(cal)) << "a saved calibration lost its ECSQ models";
  std::string o, e;
  ASSERT_EQ(run_cli("inspect " + cal, &o, &e), 0) << e;
  EXPECT_NE(o.find("ECSQ model (codec 3)"), std::string::npos) << o;
  ASSERT_EQ(run_cli("compress --codec 3 --rans-lanes 16 -r 16 --json --no-error -c " + cal + " -o " + out + " " + in,
                    &o, &e), 0) << e;
  const json rep = json::parse(o);
  EXPECT_EQ(rep["codec"], 3);
  EXPECT_GE(rep["ecsq_level"]["K"].get<int>(), 0);
  EXPECT_GE(rep["ecsq_level"]["V"].get<int>(), 0);
  ASSERT_EQ(run_cli("compress --codec 3 -r 16 --no-error -c " + cal + " -o " + out + " " + in, &o, &e), 0) << e;
  EXPECT_NE(o.find("codec 3 (ECSQ + rANS), levels K"), std::string::npos) << o;

  ASSERT_EQ(run_cli("inspect --json " + out, &o, &e), 0) << e;
  EXPECT_EQ(json::parse(o)["streams"]["K"]["ecsq_level"], rep["ecsq_level"]["K"]);
  ASSERT_EQ(run_cli("decompress -c " + cal + " -o " + dir + "/back.safetensors " + out, &o, &e), 0) << e;
}

// --adaptive: token classes (format 4) scored from the cache's own queries; inspect names the high
// class's level and the classes chunk; decompress restores it; codec 2 refuses it.
TEST(CodecV3Surfaces, CliCompressAdaptive) {
  const std::string dir = testing::temp_dir();
  const std::string cal = dir + "/ecsq.kvtcal", out = dir + "/c4.kvtc", in = repo_data("small-test.safetensors");
  ASSERT_TRUE(cal3().save(cal).is_ok());
  std::string o, e;
  ASSERT_EQ(run_cli("compress --codec 3 --adaptive -r 32 --json --no-error -c " + cal + " -o " + out + " " + in, &o, &e), 0)
      << e;
  const json rep = json::parse(o);
  EXPECT_EQ(rep["n_high_rate_tokens"], std::llround(0.25 * rep["n_compressed_tokens"].get<double>()));
  EXPECT_LT(rep["ecsq_level_high"]["K"].get<int>(), rep["ecsq_level"]["K"].get<int>());
  EXPECT_GE(rep["ratio_compressed_tokens"].get<double>(), 32.0);
  ASSERT_EQ(run_cli("inspect --json " + out, &o, &e), 0) << e;
  const json ins = json::parse(o);
  EXPECT_EQ(ins["format_version"], 4);
  EXPECT_EQ(ins["streams"]["V"]["ecsq_level_high"], rep["ecsq_level_high"]["V"]);
  int n_classes = 0;
  for (const auto& c : ins["chunks"]) n_classes += c["kind"] == "classes";
  EXPECT_EQ(n_classes, 1);
  ASSERT_EQ(run_cli("inspect " + out, &o, &e), 0) << e;
  EXPECT_NE(o.find("(high-rate tokens " + rep["ecsq_level_high"]["K"].dump() + ")"), std::string::npos) << o;
  ASSERT_EQ(run_cli("decompress -c " + cal + " -o " + dir + "/back.safetensors " + out, &o, &e), 0) << e;
  EXPECT_EQ(run_cli("compress --adaptive -r 32 -c " + cal + " -o " + out + " " + in, &o, &e), 1);
  EXPECT_NE(e.find("codec 3"), std::string::npos) << e;
}

TEST(CodecV3Surfaces, CliCodec2AndErrors) {
  const std::string dir = testing::temp_dir();
  const std::string cal = dir + "/plain.kvtcal", out = dir + "/c.kvtc", in = repo_data("small-test.safetensors");
  // Without ECSQ models, as an old file or one made with `kvtc calibrate --no-ecsq`.
  CalibrationData no_models = cal3().data();
  no_models.key.ecsq = {};
  no_models.value.ecsq = {};
  ASSERT_TRUE(Calibration(std::make_shared<CalibrationData>(no_models)).save(cal).is_ok());
  std::string o, e;
  // Codec 2 (the default) prints as before: no coder column, no ECSQ fields.
  ASSERT_EQ(run_cli("compress -r 16 --json --no-error -c " + cal + " -o " + out + " " + in, &o, &e), 0) << e;
  EXPECT_EQ(json::parse(o)["codec"], 2);
  EXPECT_FALSE(json::parse(o).contains("ecsq_level"));
  ASSERT_EQ(run_cli("inspect " + out, &o, &e), 0) << e;
  EXPECT_EQ(o.find("coder"), std::string::npos) << o;
  EXPECT_EQ(o.find("ECSQ"), std::string::npos) << o;

  // Errors: the library's messages, exit code 1.
  EXPECT_EQ(run_cli("compress --codec 4 -c " + cal + " -o " + out + " " + in, &o, &e), 1);
  EXPECT_NE(e.find("codec must be 2 or 3"), std::string::npos) << e;
  EXPECT_EQ(run_cli("compress --codec 3 --rans-lanes 0 -c " + cal + " -o " + out + " " + in, &o, &e), 1);
  EXPECT_NE(e.find("lanes"), std::string::npos) << e;
  // A calibration without models: the message says to recalibrate.
  EXPECT_EQ(run_cli("compress --codec 3 -c " + cal + " -o " + out + " " + in, &o, &e), 1);
  EXPECT_NE(e.find("recalibrate"), std::string::npos) << e;
  // The GPU encodes codec 2 only: UNSUPPORTED (or, in a build without CUDA, UNSUPPORTED for that), no
  // crash. It is refused before the calibration's models are looked at (gpu_encoder.cpp).
  EXPECT_EQ(run_cli("compress --codec 3 --device cuda -c " + cal + " -o " + out + " " + in, &o, &e), 1);
  EXPECT_NE(e.find("UNSUPPORTED"), std::string::npos) << e;
}

}  // namespace
}  // namespace kvtc
