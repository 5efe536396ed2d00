// The C API through libkvtc.so alone, as foreign callers link it (no static kvtc, no test_util, which
// needs the internals): params and their struct_size rule, compression from views in every dtype and
// layout, the decoder handle, and statuses with messages on bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvtc/kvtc.h"
#include "test_fixture_file.hpp"
#include "util/half.hpp"  // header + src/util/half.cpp compiled in: the reference 16-bit conversions

namespace {

const kvtc_dtype kDTypes[] = {KVTC_BF16, KVTC_F16, KVTC_F32};
const char* dtype_text(kvtc_dtype d) { return d == KVTC_BF16 ? "BF16" : d == KVTC_F16 ? "F16" : "F32"; }
size_t dtype_bytes(kvtc_dtype d) { return d == KVTC_F32 ? 4 : 2; }

float round_to(kvtc_dtype d, float x) {
  if (d == KVTC_BF16) return kvtc::bf16_to_f32(kvtc::f32_to_bf16(x));
  if (d == KVTC_F16) return kvtc::round_to_f16(x);
  return x;
}
void store(kvtc_dtype d, float x, uint8_t* dst) {
  if (d == KVTC_F32) {
    std::memcpy(dst, &x, 4);
    return;
  }
  const uint16_t h = d == KVTC_BF16 ? kvtc::f32_to_bf16(x) : kvtc::f32_to_f16(x);
  std::memcpy(dst, &h, 2);
}
float load(kvtc_dtype d, const uint8_t* src) {
  if (d == KVTC_F32) {
    float x;
    std::memcpy(&x, src, 4);
    return x;
  }
  uint16_t h;
  std::memcpy(&h, src, 2);
  return d == KVTC_BF16 ? kvtc::bf16_to_f32(h) : kvtc::f16_to_f32(h);
}

std::string data_file(const std::string& name) { return std::string(KVTC_SOURCE_DIR) + "/data/" + name; }
std::string temp_file(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("kvtc_test_c_api_shared_" + std::to_string(::getpid()) + "_" + name)).string();
}

// A cache's values per layer, [n_kv_heads][n_tokens][head_dim] fp32.
struct Values {
  int32_t n_layers = 0, n_kv_heads = 0, head_dim = 0;
  int64_t n_tokens = 0;
  std::vector<std::vector<float>> k, v;

  size_t layer_size() const { return size_t(n_kv_heads) * size_t(n_tokens) * size_t(head_dim); }
  Values rounded(kvtc_dtype d) const {
    Values r = *this;
    for (auto* s : {&r.k, &r.v})
      for (auto& layer : *s)
        for (float& x : layer) x = round_to(d, x);
    return r;
  }
  // Layer l of one stream in `d`, element (h, t, i) at (h * hs + t * ts + i) * size; rest zero.
  std::vector<uint8_t> layout(bool keys, int l, kvtc_dtype d, int64_t hs, int64_t ts, size_t n_elems) const {
    std::vector<uint8_t> out(n_elems * dtype_bytes(d));
    const std::vector<float>& src = (keys ? k : v)[size_t(l)];
    for (int32_t h = 0; h < n_kv_heads; ++h)
      for (int64_t t = 0; t < n_tokens; ++t)
        for (int32_t i = 0; i < head_dim; ++i)
          store(d, src[(size_t(h) * n_tokens + t) * head_dim + i], &out[size_t(h * hs + t * ts + i) * dtype_bytes(d)]);
    return out;
  }
};

Values values_of(const kvtc_cache* cache) {
  Values r;
  kvtc_cache_shape(cache, &r.n_layers, &r.n_kv_heads, &r.head_dim, &r.n_tokens);
  for (int32_t l = 0; l < r.n_layers; ++l) {
    r.k.emplace_back(kvtc_cache_keys(cache, l), kvtc_cache_keys(cache, l) + r.layer_size());
    r.v.emplace_back(kvtc_cache_values(cache, l), kvtc_cache_values(cache, l) + r.layer_size());
  }
  return r;
}

// A safetensors cache file of `values` in `d` whose metadata is exactly what kvtc_compress_view
// records for a view of this shape (rope of data/small-*.safetensors: theta 100000, half).
void write_cache_file(const std::string& path, const Values& values, kvtc_dtype d) {
  const size_t layer_bytes = values.layer_size() * dtype_bytes(d);
  std::ostringstream h;
  h << "{\"__metadata__\":{\"num_layers\":\"" << values.n_layers << "\",\"num_kv_heads\":\"" << values.n_kv_heads
    << "\",\"head_dim\":\"" << values.head_dim
    << "\",\"rope_theta\":\"100000\",\"rope_style\":\"half\",\"position_offset\":\"0\",\"tokens\":\""
    << values.n_tokens << "\"}";
  std::vector<uint8_t> data;
  for (int l = 0; l < values.n_layers; ++l)
    for (bool keys : {true, false}) {
      const size_t begin = data.size();
      const std::vector<uint8_t> bytes =
          values.layout(keys, l, d, values.n_tokens * values.head_dim, values.head_dim, values.layer_size());
      data.insert(data.end(), bytes.begin(), bytes.end());
      h << ",\"" << (keys ? "k." : "v.") << l << "\":{\"dtype\":\"" << dtype_text(d) << "\",\"shape\":["
        << values.n_kv_heads << "," << values.n_tokens << "," << values.head_dim << "],\"data_offsets\":[" << begin
        << "," << begin + layer_bytes << "]}";
    }
  h << "}";
  std::string header = h.str();
  while (header.size() % 8 != 0) header += ' ';
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(header.data(), std::streamsize(header.size()));
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
  ASSERT_TRUE(f.good()) << path;
}

// A view's backing memory: one buffer per layer and stream, and the pointer arrays.
struct ViewMemory {
  std::vector<std::vector<uint8_t>> k, v;
  std::vector<const void*> k_ptrs, v_ptrs;
  kvtc_cache_view view{};
};

// values in `d` laid out with strides hs, ts (n_elems elements per layer buffer).
void make_view(const Values& values, kvtc_dtype element_dtype, kvtc_dtype dtype, int64_t hs, int64_t ts,
               size_t n_elems, ViewMemory* m) {
  for (int l = 0; l < values.n_layers; ++l) {
    m->k.push_back(values.layout(true, l, element_dtype, hs, ts, n_elems));
    m->v.push_back(values.layout(false, l, element_dtype, hs, ts, n_elems));
  }
  for (int l = 0; l < values.n_layers; ++l) {
    m->k_ptrs.push_back(m->k[size_t(l)].data());
    m->v_ptrs.push_back(m->v[size_t(l)].data());
  }
  m->view.struct_size = sizeof(kvtc_cache_view);
  m->view.n_layers = values.n_layers;
  m->view.n_kv_heads = values.n_kv_heads;
  m->view.head_dim = values.head_dim;
  m->view.n_tokens = values.n_tokens;
  m->view.position_offset = 0;
  m->view.element_dtype = element_dtype;
  m->view.dtype = dtype;
  m->view.keys = m->k_ptrs.data();
  m->view.values = m->v_ptrs.data();
  m->view.head_stride = hs;
  m->view.token_stride = ts;
}

// Token-major [T][H][D], as inference engines hold caches.
void token_major_view(const Values& values, kvtc_dtype element_dtype, kvtc_dtype dtype, ViewMemory* m) {
  make_view(values, element_dtype, dtype, values.head_dim, int64_t(values.n_kv_heads) * values.head_dim,
            values.layer_size(), m);
}

std::vector<uint8_t> compress_view(const kvtc_calibration* cal, const kvtc_cache_view& view,
                                   const kvtc_compress_params* params, kvtc_compress_report* report = nullptr) {
  uint8_t* buf = nullptr;
  size_t size = 0;
  const kvtc_status s = kvtc_compress_view(cal, &view, params, &buf, &size, report);
  EXPECT_EQ(s, KVTC_OK) << kvtc_last_error();
  if (s != KVTC_OK) return {};
  std::vector<uint8_t> out(buf, buf + size);
  kvtc_buffer_free(buf);
  return out;
}

class CApiShared : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // ctest's fixture entry (TestFixtures.SmallCalibration, run first) has written a calibration of
    // small-calib.safetensors with its ECSQ models at ratios 8, 16, 20 and 32; read through the C API
    // while it is newer than this executable, it spares every test process (each of these tests is
    // one) about 8 s of calibration at -O3 and 25 s under ASan. Run by hand without it, the suite
    // calibrates at ratio 20 as before.
    const std::string fixture = kvtc::testing::small_calibration_fixture_path();
    if (!kvtc::testing::fixture_is_fresh(fixture) || kvtc_calibration_load(fixture.c_str(), &cal_) != KVTC_OK) {
      const std::string calib = data_file("small-calib.safetensors");
      const char* paths[] = {calib.c_str()};
      const double ratios[] = {20};
      ASSERT_EQ(kvtc_calibration_create(paths, 1, ratios, 1, &cal_), KVTC_OK) << kvtc_last_error();
    }
    kvtc_cache* cache = nullptr;
    ASSERT_EQ(kvtc_cache_load(data_file("small-test.safetensors").c_str(), &cache), KVTC_OK) << kvtc_last_error();
    values_ = new Values(values_of(cache));
    kvtc_cache_free(cache);
  }
  static void TearDownTestSuite() {
    kvtc_calibration_free(cal_);
    cal_ = nullptr;
    delete values_;
    values_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(cal_, nullptr); }

  // kvtc_compress of `values` saved as a cache file in `d` and loaded back.
  static std::vector<uint8_t> compress_file(const Values& values, kvtc_dtype d) {
    const std::string path = temp_file(std::string("cache_") + dtype_text(d) + ".safetensors");
    write_cache_file(path, values, d);
    kvtc_cache* cache = nullptr;
    EXPECT_EQ(kvtc_cache_load(path.c_str(), &cache), KVTC_OK) << kvtc_last_error();
    std::remove(path.c_str());
    if (!cache) return {};
    uint8_t* buf = nullptr;
    size_t size = 0;
    EXPECT_EQ(kvtc_compress(cal_, cache, 20, 0, &buf, &size), KVTC_OK) << kvtc_last_error();
    kvtc_cache_free(cache);
    std::vector<uint8_t> out(buf, buf + size);
    kvtc_buffer_free(buf);
    return out;
  }

  static kvtc_calibration* cal_;
  static Values* values_;
};
kvtc_calibration* CApiShared::cal_ = nullptr;
Values* CApiShared::values_ = nullptr;

TEST_F(CApiShared, CalibrationShape) {
  int32_t layers = -1, heads = -1, dim = -1, sink = -1, window = -1;
  kvtc_calibration_shape(cal_, &layers, &heads, &dim, &sink, &window);
  EXPECT_EQ(layers, 8);
  EXPECT_EQ(heads, 2);
  EXPECT_EQ(dim, 128);
  EXPECT_EQ(sink, 4);
  EXPECT_EQ(window, 128);
  kvtc_calibration_shape(cal_, nullptr, nullptr, nullptr, nullptr, nullptr);
  kvtc_calibration_shape(nullptr, &layers, nullptr, nullptr, nullptr, nullptr);
  EXPECT_EQ(layers, 8);
}

TEST_F(CApiShared, ParamsDefaults) {
  kvtc_compress_params p;
  std::memset(&p, 0xab, sizeof p);
  kvtc_compress_params_init(&p);
  EXPECT_EQ(p.struct_size, sizeof p);
  EXPECT_EQ(p.target_ratio, 20.0);
  EXPECT_EQ(p.deflate_level, 6);
  EXPECT_EQ(p.n_threads, 0);
  EXPECT_EQ(p.exact_head_tokens, -1);
  EXPECT_EQ(p.exact_tail_tokens, -1);
  EXPECT_EQ(p.chunk_tokens, 256);
  EXPECT_EQ(p.chunk_max_bytes, 16 * 1024);
  EXPECT_EQ(p.measure_error, 0);
  EXPECT_EQ(p.reserved0, 0);
  EXPECT_EQ(p.codec, 2);
  EXPECT_EQ(p.rans_lanes, 32);
  EXPECT_EQ(p.token_importance, nullptr);
  EXPECT_EQ(p.high_rate_fraction, 0.25);
  EXPECT_EQ(p.high_rate_levels, 32);
  EXPECT_EQ(p.reserved1, 0);
  // Format 4's fields start past the struct before them.
  EXPECT_GE(offsetof(kvtc_compress_params, token_importance), offsetof(kvtc_compress_params, rans_lanes) + sizeof(int32_t));
  // Fields added with codec 3 start past the older struct's sizeof, never in its tail padding.
  EXPECT_GE(offsetof(kvtc_compress_params, codec), offsetof(kvtc_compress_params, measure_error) + sizeof(int32_t));
  EXPECT_EQ(offsetof(kvtc_compress_params, codec) % alignof(kvtc_compress_params), 0u);
  kvtc_compress_params_init(nullptr);  // no crash
}

TEST_F(CApiShared, ParamsStructSize) {
  ViewMemory m;
  token_major_view(*values_, KVTC_F32, KVTC_BF16, &m);
  kvtc_compress_params defaults;
  kvtc_compress_params_init(&defaults);
  const std::vector<uint8_t> with_null = compress_view(cal_, m.view, nullptr);
  EXPECT_EQ(compress_view(cal_, m.view, &defaults), with_null);

  // An older caller's struct ends before chunk_tokens: what lies past it is ignored (defaults).
  kvtc_compress_params p;
  kvtc_compress_params_init(&p);
  p.deflate_level = 1;
  p.chunk_tokens = 0;        // invalid, but beyond struct_size
  p.chunk_max_bytes = 1;     // likewise
  p.struct_size = offsetof(kvtc_compress_params, chunk_tokens);
  kvtc_compress_params full;
  kvtc_compress_params_init(&full);
  full.deflate_level = 1;
  const std::vector<uint8_t> level1 = compress_view(cal_, m.view, &full);
  EXPECT_EQ(compress_view(cal_, m.view, &p), level1);
  EXPECT_NE(level1, with_null);
  // The struct before codec 3's fields (struct_size = offsetof(codec)): codec and rans_lanes keep their
  // defaults whatever lies past it, and reserved0 (its tail padding then) is never read.
  kvtc_compress_params old;
  kvtc_compress_params_init(&old);
  old.struct_size = offsetof(kvtc_compress_params, codec);
  old.reserved0 = -1;
  old.codec = 9;
  old.rans_lanes = -1;
  EXPECT_EQ(compress_view(cal_, m.view, &old), with_null);
  // Inside struct_size they count: codec 9 is refused, codec 3 writes format 3 (the calibration
  // carries ECSQ models, as calibrate makes them by default).
  old.struct_size = sizeof old;
  old.rans_lanes = 32;
  uint8_t* out = nullptr;
  size_t out_size = 0;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &old, &out, &out_size, nullptr), KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("codec must be 2 or 3"), std::string::npos) << kvtc_last_error();
  old.codec = 3;
  ASSERT_EQ(kvtc_compress_view(cal_, &m.view, &old, &out, &out_size, nullptr), KVTC_OK) << kvtc_last_error();
  ASSERT_GE(out_size, size_t(12));
  uint32_t version = 0;
  std::memcpy(&version, out + 8, 4);
  EXPECT_EQ(version, 3u);
  kvtc_buffer_free(out);
  // With token importance (format 4's fields inside struct_size): a version 4 container; a caller whose
  // struct ends before them keeps format 3 whatever lies past it.
  std::vector<float> importance(size_t(m.view.n_tokens));
  for (size_t t = 0; t < importance.size(); ++t) importance[t] = float((t * 37) % 101);
  old.token_importance = importance.data();
  ASSERT_EQ(kvtc_compress_view(cal_, &m.view, &old, &out, &out_size, nullptr), KVTC_OK) << kvtc_last_error();
  std::memcpy(&version, out + 8, 4);
  EXPECT_EQ(version, 4u);
  kvtc_buffer_free(out);
  old.struct_size = offsetof(kvtc_compress_params, token_importance);
  ASSERT_EQ(kvtc_compress_view(cal_, &m.view, &old, &out, &out_size, nullptr), KVTC_OK) << kvtc_last_error();
  std::memcpy(&version, out + 8, 4);
  EXPECT_EQ(version, 3u);
  kvtc_buffer_free(out);
  old.struct_size = sizeof old;
  old.high_rate_levels = 0;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &old, &out, &out_size, nullptr), KVTC_INVALID_ARGUMENT);
  old.token_importance = nullptr;
  // Inside struct_size the invalid value counts.
  p.struct_size = sizeof p;
  uint8_t* buf = nullptr;
  size_t size = 0;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &p, &buf, &size, nullptr), KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("chunk"), std::string::npos) << kvtc_last_error();
  // A struct cut inside a field: that field takes its default too.
  full.struct_size = offsetof(kvtc_compress_params, deflate_level) + 2;
  EXPECT_EQ(compress_view(cal_, m.view, &full), with_null);

  // struct_size 0 (forgotten) and absurd sizes are refused, with a message naming the field.
  kvtc_compress_params_init(&p);
  p.struct_size = 0;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &p, &buf, &size, nullptr), KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("struct_size"), std::string::npos) << kvtc_last_error();
  p.struct_size = size_t(1) << 40;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &p, &buf, &size, nullptr), KVTC_INVALID_ARGUMENT);

  // A newer caller's larger struct: accepted while its unknown fields are zero.
  struct Newer {
    kvtc_compress_params p;
    int64_t future_field;
  } newer;
  std::memset(&newer, 0, sizeof newer);
  kvtc_compress_params_init(&newer.p);
  newer.p.struct_size = sizeof newer;
  newer.p.deflate_level = 1;
  EXPECT_EQ(compress_view(cal_, m.view, &newer.p), level1);
  newer.future_field = 3;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &newer.p, &buf, &size, nullptr), KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("zero"), std::string::npos) << kvtc_last_error();

  // Report: filled up to the caller's struct_size.
  kvtc_compress_report r;
  std::memset(&r, 0xcd, sizeof r);
  r.struct_size = sizeof r;
  kvtc_compress_params measured;
  kvtc_compress_params_init(&measured);
  measured.measure_error = 1;
  const std::vector<uint8_t> bytes = compress_view(cal_, m.view, &measured, &r);
  EXPECT_EQ(bytes, with_null);  // measuring changes nothing in the container
  EXPECT_EQ(r.struct_size, sizeof r);
  EXPECT_EQ(r.n_tokens, 512);
  EXPECT_EQ(r.n_compressed_tokens, 512 - 4 - 128);
  EXPECT_EQ(r.raw_bytes, int64_t(512) * 2 * 8 * 2 * 128 * 2);
  EXPECT_EQ(r.file_bytes, int64_t(bytes.size()));
  EXPECT_GT(r.ratio_compressed_tokens, 10.0);
  EXPECT_NEAR(r.ratio_file, double(r.raw_bytes) / double(r.file_bytes), 1e-9);
  EXPECT_GT(r.k_relative_mse, 0.0);
  EXPECT_LT(r.k_relative_mse, 0.5);
  EXPECT_GT(r.v_relative_mse, 0.0);
  EXPECT_LT(r.v_relative_mse, 0.5);
  std::memset(&r, 0xcd, sizeof r);
  r.struct_size = offsetof(kvtc_compress_report, raw_bytes);  // an older, shorter report
  compress_view(cal_, m.view, nullptr, &r);
  EXPECT_EQ(r.n_compressed_tokens, 512 - 4 - 128);
  int64_t untouched;
  std::memset(&untouched, 0xcd, sizeof untouched);
  EXPECT_EQ(r.raw_bytes, untouched);
  r.struct_size = 0;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, nullptr, &buf, &size, &r), KVTC_INVALID_ARGUMENT);

  // Block mode through the params: nothing exact.
  kvtc_compress_params block;
  kvtc_compress_params_init(&block);
  block.exact_head_tokens = 0;
  block.exact_tail_tokens = 0;
  kvtc_compress_report br;
  br.struct_size = sizeof br;
  compress_view(cal_, m.view, &block, &br);
  EXPECT_EQ(br.n_compressed_tokens, 512);
  block.exact_head_tokens = -2;
  EXPECT_EQ(kvtc_compress_view(cal_, &m.view, &block, &buf, &size, nullptr), KVTC_INVALID_ARGUMENT);
}

// A view of a cache's values in any dtype and layout gives the container kvtc_compress gives for the
// same values in a cache file of the same dtype.
TEST_F(CApiShared, ViewMatchesCompressInEveryDtypeAndLayout) {
  for (kvtc_dtype d : kDTypes) {
    SCOPED_TRACE(dtype_text(d));
    const Values values = values_->rounded(d);
    const std::vector<uint8_t> expected = compress_file(values, d);
    ASSERT_FALSE(expected.empty());
    {
      ViewMemory m;  // token-major, in the container's dtype
      token_major_view(values, d, d, &m);
      EXPECT_EQ(compress_view(cal_, m.view, nullptr), expected);
    }
    {
      ViewMemory m;  // fp32 elements, heads outer, rows padded to 136 elements
      const int64_t ts = values.head_dim + 8;
      make_view(values, KVTC_F32, d, values.n_tokens * ts, ts, size_t(values.n_kv_heads * values.n_tokens * ts), &m);
      EXPECT_EQ(compress_view(cal_, m.view, nullptr), expected);
    }
  }
}

TEST_F(CApiShared, CompressIntoAndBound) {
  ViewMemory m;
  token_major_view(*values_, KVTC_BF16, KVTC_BF16, &m);
  const std::vector<uint8_t> expected = compress_view(cal_, m.view, nullptr);
  const size_t bound = kvtc_compress_bound(cal_, values_->n_tokens);
  EXPECT_GE(bound, expected.size());
  EXPECT_EQ(kvtc_compress_bound(nullptr, 1), 0u);
  EXPECT_EQ(kvtc_compress_bound(cal_, -1), 0u);
  EXPECT_GT(kvtc_compress_bound(cal_, 0), 0u);

  std::vector<uint8_t> buffer(bound, 0xee);
  size_t size = 0;
  kvtc_compress_report r;
  r.struct_size = sizeof r;
  ASSERT_EQ(kvtc_compress_view_into(cal_, &m.view, nullptr, buffer.data(), buffer.size(), &size, &r), KVTC_OK)
      << kvtc_last_error();
  ASSERT_EQ(size, expected.size());
  EXPECT_EQ(std::vector<uint8_t>(buffer.begin(), buffer.begin() + long(size)), expected);
  EXPECT_EQ(r.file_bytes, int64_t(size));

  // One byte short: OUT_OF_SPACE, the size needed, and the buffer untouched.
  std::vector<uint8_t> small(expected.size() - 1, 0xee);
  size = 0;
  EXPECT_EQ(kvtc_compress_view_into(cal_, &m.view, nullptr, small.data(), small.size(), &size, nullptr),
            KVTC_OUT_OF_SPACE);
  EXPECT_EQ(size, expected.size());
  EXPECT_NE(std::string(kvtc_last_error()).find(std::to_string(expected.size())), std::string::npos);
  EXPECT_EQ(small, std::vector<uint8_t>(expected.size() - 1, 0xee));
  // Capacity 0 with no buffer: the size alone.
  size = 0;
  EXPECT_EQ(kvtc_compress_view_into(cal_, &m.view, nullptr, nullptr, 0, &size, nullptr), KVTC_OUT_OF_SPACE);
  EXPECT_EQ(size, expected.size());
  EXPECT_EQ(kvtc_compress_view_into(cal_, &m.view, nullptr, nullptr, 10, &size, nullptr), KVTC_INVALID_ARGUMENT);
}

TEST_F(CApiShared, DecoderMatchesDecompressInEveryDtype) {
  ViewMemory m;
  token_major_view(*values_, KVTC_F32, KVTC_BF16, &m);
  std::vector<uint8_t> bytes = compress_view(cal_, m.view, nullptr);
  ASSERT_FALSE(bytes.empty());
  kvtc_cache* reference = nullptr;
  ASSERT_EQ(kvtc_decompress(cal_, bytes.data(), bytes.size(), 0, &reference), KVTC_OK) << kvtc_last_error();
  const Values ref = values_of(reference);
  kvtc_cache_free(reference);

  kvtc_decoder* dec = nullptr;
  {
    std::vector<uint8_t> copy = bytes;  // the bytes need not outlive kvtc_decoder_open
    ASSERT_EQ(kvtc_decoder_open(cal_, copy.data(), copy.size(), 2, &dec), KVTC_OK) << kvtc_last_error();
    std::fill(copy.begin(), copy.end(), 0);
  }
  int32_t layers = 0, heads = 0, dim = 0;
  int64_t tokens = 0, offset = -1;
  kvtc_dtype dtype = KVTC_F32;
  kvtc_decoder_shape(dec, &layers, &heads, &dim, &tokens, &offset, &dtype);
  EXPECT_EQ(layers, 8);
  EXPECT_EQ(heads, 2);
  EXPECT_EQ(dim, 128);
  EXPECT_EQ(tokens, 512);
  EXPECT_EQ(offset, 0);
  EXPECT_EQ(dtype, KVTC_BF16);
  kvtc_decoder_shape(dec, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  kvtc_decoder_shape(nullptr, &layers, nullptr, nullptr, nullptr, nullptr, nullptr);

  const int64_t hs = dim, ts = int64_t(heads) * dim;  // token-major
  const size_t n = size_t(heads) * size_t(tokens) * size_t(dim);
  for (kvtc_dtype d : kDTypes) {
    SCOPED_TRACE(dtype_text(d));
    std::vector<uint8_t> k(n * dtype_bytes(d)), v(k.size());
    for (int32_t l = 0; l < layers; ++l) {
      ASSERT_EQ(kvtc_decoder_restore_layer(dec, l, d, k.data(), v.data(), hs, ts), KVTC_OK) << kvtc_last_error();
      size_t k_bad = 0, v_bad = 0;
      for (int32_t h = 0; h < heads; ++h)
        for (int64_t t = 0; t < tokens; ++t)
          for (int32_t i = 0; i < dim; ++i) {
            const size_t at = size_t(h * hs + t * ts + i) * dtype_bytes(d);
            const size_t ref_at = (size_t(h) * size_t(tokens) + size_t(t)) * size_t(dim) + size_t(i);
            // The decoder converts the fp32 reconstruction with round to nearest even, as round_to does.
            k_bad += load(d, &k[at]) != round_to(d, ref.k[size_t(l)][ref_at]);
            v_bad += load(d, &v[at]) != round_to(d, ref.v[size_t(l)][ref_at]);
          }
      EXPECT_EQ(k_bad, 0u) << "layer " << l;
      EXPECT_EQ(v_bad, 0u) << "layer " << l;
    }
  }

  // Several layers at once from one decoder, into distinct buffers.
  std::vector<std::vector<float>> ks(static_cast<size_t>(layers), std::vector<float>(n));
  std::vector<std::vector<float>> vs = ks;
  std::vector<std::thread> threads;
  std::vector<kvtc_status> statuses(size_t(layers), KVTC_INTERNAL);
  for (int32_t l = 0; l < layers; ++l)
    threads.emplace_back([&, l] {
      statuses[size_t(l)] = kvtc_decoder_restore_layer(dec, l, KVTC_F32, ks[size_t(l)].data(), vs[size_t(l)].data(),
                                                       int64_t(tokens) * dim, dim);
    });
  for (auto& t : threads) t.join();
  for (int32_t l = 0; l < layers; ++l) {
    EXPECT_EQ(statuses[size_t(l)], KVTC_OK);
    EXPECT_EQ(ks[size_t(l)], ref.k[size_t(l)]) << "layer " << l;
    EXPECT_EQ(vs[size_t(l)], ref.v[size_t(l)]) << "layer " << l;
  }

  // Bad requests.
  std::vector<float> k(n), v(n);
  EXPECT_EQ(kvtc_decoder_restore_layer(dec, layers, KVTC_F32, k.data(), v.data(), tokens * dim, dim),
            KVTC_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvtc_last_error()).find("out of range"), std::string::npos) << kvtc_last_error();
  EXPECT_EQ(kvtc_decoder_restore_layer(dec, -1, KVTC_F32, k.data(), v.data(), tokens * dim, dim),
            KVTC_INVALID_ARGUMENT);
  EXPECT_EQ(kvtc_decoder_restore_layer(dec, 0, static_cast<kvtc_dtype>(7), k.data(), v.data(), tokens * dim, dim),
            KVTC_INVALID_ARGUMENT);
  EXPECT_EQ(kvtc_decoder_restore_layer(dec, 0, KVTC_F32, k.data(), v.data(), tokens * dim, 1),
            KVTC_INVALID_ARGUMENT);  // rows overlap
  EXPECT_EQ(kvtc_decoder_restore_layer(dec, 0, KVTC_F32, nullptr, v.data(), tokens * dim, dim), KVTC_INVALID_ARGUMENT);
  kvtc_decoder_free(dec);
  kvtc_decoder_free(nullptr);
}

TEST_F(CApiShared, MismatchedViewShape) {
  ViewMemory m;
  token_major_view(*values_, KVTC_F32, KVTC_BF16, &m);
  uint8_t* buf = nullptr;
  size_t size = 0;
  for (int field = 0; field < 3; ++field) {
    kvtc_cache_view v = m.view;
    if (field == 0) v.n_layers = 7;
    if (field == 1) v.n_kv_heads = 1;
    if (field == 2) v.head_dim = 64;
    EXPECT_EQ(kvtc_compress_view(cal_, &v, nullptr, &buf, &size, nullptr), KVTC_MISMATCH) << field;
    EXPECT_NE(std::string(kvtc_last_error()).find("calibration"), std::string::npos) << kvtc_last_error();
    std::vector<uint8_t> out(1 << 20);
    EXPECT_EQ(kvtc_compress_view_into(cal_, &v, nullptr, out.data(), out.size(), &size, nullptr), KVTC_MISMATCH);
  }
}

TEST_F(CApiShared, BadArgumentsGiveStatusAndMessage) {
  ViewMemory m;
  token_major_view(*values_, KVTC_F32, KVTC_BF16, &m);
  uint8_t* buf = nullptr;
  size_t size = 0;
  auto expect_invalid = [](kvtc_status s, const char* what) {
    EXPECT_EQ(s, KVTC_INVALID_ARGUMENT) << what;
    EXPECT_STRNE(kvtc_last_error(), "") << what;
  };
  expect_invalid(kvtc_compress_view(nullptr, &m.view, nullptr, &buf, &size, nullptr), "cal");
  EXPECT_NE(std::string(kvtc_last_error()).find("NULL"), std::string::npos) << kvtc_last_error();
  expect_invalid(kvtc_compress_view(cal_, nullptr, nullptr, &buf, &size, nullptr), "view");
  expect_invalid(kvtc_compress_view(cal_, &m.view, nullptr, nullptr, &size, nullptr), "out");
  expect_invalid(kvtc_compress_view(cal_, &m.view, nullptr, &buf, nullptr, nullptr), "out_size");
  expect_invalid(kvtc_compress_view_into(nullptr, &m.view, nullptr, nullptr, 0, &size, nullptr), "into cal");
  expect_invalid(kvtc_compress_view_into(cal_, &m.view, nullptr, nullptr, 0, nullptr, nullptr), "into out_size");
  kvtc_decoder* dec = nullptr;
  const uint8_t byte = 0;
  expect_invalid(kvtc_decoder_open(nullptr, &byte, 1, 0, &dec), "open cal");
  expect_invalid(kvtc_decoder_open(cal_, nullptr, 1, 0, &dec), "open data");
  expect_invalid(kvtc_decoder_open(cal_, &byte, 1, 0, nullptr), "open out");
  float f = 0;
  expect_invalid(kvtc_decoder_restore_layer(nullptr, 0, KVTC_F32, &f, &f, 0, 0), "restore dec");

  // The view itself.
  struct Case {
    const char* what;
    void (*edit)(kvtc_cache_view*);
  };
  const Case cases[] = {
      {"struct_size 0", [](kvtc_cache_view* v) { v->struct_size = 0; }},
      {"struct_size short", [](kvtc_cache_view* v) { v->struct_size = offsetof(kvtc_cache_view, token_stride); }},
      {"keys NULL", [](kvtc_cache_view* v) { v->keys = nullptr; }},
      {"values NULL", [](kvtc_cache_view* v) { v->values = nullptr; }},
      {"element dtype", [](kvtc_cache_view* v) { v->element_dtype = static_cast<kvtc_dtype>(3); }},
      {"dtype", [](kvtc_cache_view* v) { v->dtype = static_cast<kvtc_dtype>(-1); }},
      {"n_tokens", [](kvtc_cache_view* v) { v->n_tokens = -1; }},
      {"position_offset", [](kvtc_cache_view* v) { v->position_offset = -5; }},
      {"head_stride", [](kvtc_cache_view* v) { v->head_stride = -1; }},
  };
  for (const Case& c : cases) {
    kvtc_cache_view v = m.view;
    c.edit(&v);
    expect_invalid(kvtc_compress_view(cal_, &v, nullptr, &buf, &size, nullptr), c.what);
  }
  // A NULL layer pointer.
  std::vector<const void*> keys = m.k_ptrs;
  keys[3] = nullptr;
  kvtc_cache_view v = m.view;
  v.keys = keys.data();
  expect_invalid(kvtc_compress_view(cal_, &v, nullptr, &buf, &size, nullptr), "layer pointer");
  EXPECT_NE(std::string(kvtc_last_error()).find("k.3"), std::string::npos) << kvtc_last_error();

  // Success clears the message.
  kvtc_calibration_shape(cal_, nullptr, nullptr, nullptr, nullptr, nullptr);
  const std::vector<uint8_t> ok = compress_view(cal_, m.view, nullptr);
  EXPECT_STREQ(kvtc_last_error(), "");
}

TEST_F(CApiShared, CorruptContainers) {
  ViewMemory m;
  token_major_view(*values_, KVTC_F32, KVTC_BF16, &m);
  const std::vector<uint8_t> bytes = compress_view(cal_, m.view, nullptr);
  ASSERT_FALSE(bytes.empty());
  kvtc_decoder* dec = nullptr;
  auto expect_bad = [&](const std::vector<uint8_t>& b, const char* what) {
    const kvtc_status s = kvtc_decoder_open(cal_, b.data(), b.size(), 0, &dec);
    EXPECT_TRUE(s == KVTC_CORRUPT || s == KVTC_CHECKSUM_MISMATCH) << what << ": " << kvtc_status_name(s);
    EXPECT_STRNE(kvtc_last_error(), "") << what;
    EXPECT_EQ(dec, nullptr) << what;
  };
  for (size_t at : {size_t(0), size_t(48), size_t(100), bytes.size() / 3, bytes.size() / 2, bytes.size() - 1}) {
    std::vector<uint8_t> b = bytes;
    b[at] ^= 0x10;
    expect_bad(b, ("flip at " + std::to_string(at)).c_str());
  }
  expect_bad(std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(bytes.size() / 2)), "truncated");
  expect_bad(std::vector<uint8_t>(64, 0x5a), "junk");
  std::vector<uint8_t> b = bytes;
  b[b.size() / 2] ^= 1;
  EXPECT_EQ(kvtc_decoder_open(cal_, b.data(), b.size(), 0, &dec), KVTC_CHECKSUM_MISMATCH);
  EXPECT_NE(std::string(kvtc_last_error()).find("checksum"), std::string::npos) << kvtc_last_error();
}

}  // namespace
