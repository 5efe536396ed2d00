// The safetensors reader and writer: round trips, the real cache files, files made by the Python
// `safetensors` library (tests/data/safetensors_ref_*, see make_safetensors_ref.py), and hostile bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "format/safetensors.hpp"
#include "test_util.hpp"
#include "util/file_io.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

std::string test_data(const std::string& name) { return std::string(KVTC_SOURCE_DIR) + "/tests/data/" + name; }

// The values make_safetensors_ref.py uses: fp32 ((7 i) mod 13 - 6) / 3.
std::vector<float> ref_values(int n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[i] = float((i * 7) % 13 - 6) / 3.0f;
  return v;
}
// fp16 edge cases: largest finite, just below and at the overflow midpoint, a subnormal, -0, ties.
std::vector<float> f16_specials() {
  return {65504.0f, 65519.0f, 65520.0f, 1e-7f, -0.0f, std::ldexp(1.0f, -25), 3 * std::ldexp(1.0f, -25),
          1.0f / 3.0f, -2.0f, 1e-4f};
}
// bf16 edge cases: ties to even, a huge value, FLT_MAX (rounds to inf), an fp32 subnormal, NaN.
std::vector<float> bf16_specials() {
  return {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), 3e38f, std::numeric_limits<float>::max(),
          -1e-40f, std::numeric_limits<float>::quiet_NaN()};
}

std::vector<float> as_bf16(std::vector<float> v) {
  for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}
std::vector<float> as_f16(std::vector<float> v) {
  for (auto& x : v) x = round_to_f16(x);
  return v;
}

// Bitwise equality, so that -0 and NaN are checked too.
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << what << "[" << i << "]";
    } else {
      uint32_t a, b;
      std::memcpy(&a, &got[i], 4);
      std::memcpy(&b, &want[i], 4);
      EXPECT_EQ(a, b) << what << "[" << i << "]: " << got[i] << " vs " << want[i];
    }
  }
}

// A file from a header given as JSON text and `data_bytes` bytes of data (pattern-filled).
std::vector<uint8_t> raw_file(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> out(8 + header.size() + data_bytes);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = uint8_t(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  for (size_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = uint8_t(i * 31);
  return out;
}

StatusCode parse_code(const std::vector<uint8_t>& bytes) {
  auto f = SafetensorsFile::parse_view(bytes.data(), bytes.size());
  return f.is_ok() ? StatusCode::kOk : f.status().code();
}

// The tensors of tests/data/safetensors_ref_kvtc_writer.safetensors (also loaded by the Python script).
struct WriterFixture {
  std::vector<float> a = ref_values(6), b = f16_specials(), c = ref_values(8);
  std::vector<SafetensorsTensorF32> tensors() const {
    return {{"w_bf16", DType::kBF16, {2, 3}, a.data()},
            {"w_f16", DType::kF16, {10}, b.data()},
            {"w_f32", DType::kF32, {2, 2, 2}, c.data()},
            {"w_empty", DType::kF32, {0, 3}, nullptr}};
  }
  std::map<std::string, std::string> metadata() const {
    return {{"format", "kvtc-test"}, {"unicode", "\xc3\xbc\xe2\x9c\x93"}};  // "ü✓"
  }
};

TEST(Safetensors, RoundTripAllDtypes) {
  WriterFixture w;
  auto bytes = serialize_safetensors(w.tensors(), w.metadata());
  ASSERT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes->data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u) << "header padded to 8 bytes";

  auto f = SafetensorsFile::parse(std::move(bytes).value());
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata(), w.metadata());
  ASSERT_EQ(f->entries().size(), 4u);
  // Entries are listed in data order, which is the order they were written in.
  std::vector<std::string> names;
  for (const auto& entry : f->entries()) names.push_back(entry.name);
  EXPECT_EQ(names, (std::vector<std::string>{"w_bf16", "w_f16", "w_f32", "w_empty"}));
  const SafetensorsEntry* e = f->find("w_f16");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, "F16");
  EXPECT_EQ(e->shape, (std::vector<int64_t>{10}));
  EXPECT_EQ(e->size_bytes, 20u);
  EXPECT_EQ(f->find("w_bf16")->offset_bytes, 0u);
  EXPECT_EQ(f->find("w_f16")->offset_bytes, 12u);
  EXPECT_EQ(f->find("w_f32")->offset_bytes, 32u);
  EXPECT_EQ(f->find("nope"), nullptr);

  expect_same_bits(f->read_f32("w_bf16").value(), as_bf16(w.a), "w_bf16");
  expect_same_bits(f->read_f32("w_f16").value(), as_f16(w.b), "w_f16");
  expect_same_bits(f->read_f32("w_f32").value(), w.c, "w_f32");
  EXPECT_TRUE(f->read_f32("w_empty").value().empty());
  EXPECT_EQ(f->read_f32("nope").status().code(), StatusCode::kInvalidArgument);
}

// Our writer's output is pinned: Python's safetensors loaded exactly these bytes (make_safetensors_ref.py
// output in its header comment). KVTC_REGEN_TESTDATA=1 rewrites the file after an intended change.
TEST(Safetensors, WriterMatchesFileCheckedByPython) {
  WriterFixture w;
  auto bytes = serialize_safetensors(w.tensors(), w.metadata());
  ASSERT_TRUE(bytes.is_ok());
  const std::string path = test_data("safetensors_ref_kvtc_writer.safetensors");
  if (std::getenv("KVTC_REGEN_TESTDATA")) {
    ASSERT_TRUE(write_file_atomic(path, bytes.value()).is_ok());
  }
  auto golden = read_file(path);
  ASSERT_TRUE(golden.is_ok()) << golden.status().to_string();
  EXPECT_EQ(golden.value(), bytes.value());
}

TEST(Safetensors, ReadsFileWrittenByPythonTorch) {
  auto f = SafetensorsFile::open(test_data("safetensors_ref_torch.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("model"), "ref");
  EXPECT_EQ(f->metadata().at("unicode"), "\xc3\xbc\xe2\x9c\x93");
  ASSERT_NE(f->find("x_bf16"), nullptr);
  EXPECT_EQ(f->find("x_bf16")->shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(f->find("x_bf16")->dtype, "BF16");
  expect_same_bits(f->read_f32("x_bf16").value(), as_bf16(ref_values(15)), "x_bf16");
  // torch's fp32 -> bf16 rounding (ties to even, overflow to inf, NaN) agrees with ours.
  expect_same_bits(f->read_f32("x_bf16_specials").value(), as_bf16(bf16_specials()), "x_bf16_specials");
  EXPECT_EQ(f->find("x_f16")->shape, (std::vector<int64_t>{2, 4}));
  expect_same_bits(f->read_f32("x_f16").value(), as_f16(ref_values(8)), "x_f16");
  expect_same_bits(f->read_f32("x_f16_specials").value(), as_f16(f16_specials()), "x_f16_specials");
  expect_same_bits(f->read_f32("x_f32").value(), ref_values(4), "x_f32");
  EXPECT_EQ(f->find("scalar")->shape, std::vector<int64_t>{});
  expect_same_bits(f->read_f32("scalar").value(), {2.5f}, "scalar");
  EXPECT_EQ(f->find("empty")->shape, (std::vector<int64_t>{0, 2}));
  EXPECT_TRUE(f->read_f32("empty").value().empty());
  // Other dtypes parse (size checked) but do not convert to fp32.
  const SafetensorsEntry* ints = f->find("ints");
  ASSERT_NE(ints, nullptr);
  EXPECT_EQ(ints->dtype, "I64");
  EXPECT_EQ(f->read_f32("ints").status().code(), StatusCode::kUnsupported);
  int64_t iv[3];
  std::memcpy(iv, f->data(*ints), sizeof iv);
  EXPECT_EQ(iv[0], -1);
  EXPECT_EQ(iv[1], 0);
  EXPECT_EQ(iv[2], int64_t(1) << 40);
}

TEST(Safetensors, ReadsFileWrittenByPythonNumpy) {
  auto f = SafetensorsFile::open(test_data("safetensors_ref_numpy.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("writer"), "safetensors.numpy");
  expect_same_bits(f->read_f32("n_f16").value(), as_f16(f16_specials()), "n_f16");
  EXPECT_EQ(f->find("n_f32")->shape, (std::vector<int64_t>{3, 1, 2}));
  expect_same_bits(f->read_f32("n_f32").value(), ref_values(6), "n_f32");
}

TEST(Safetensors, ParsesRealCacheFiles) {
  for (const auto& [name, n_tokens, n_q] : {std::tuple{"small-test.safetensors", 512, 32},
                                           std::tuple{"test-code.safetensors", 1024, 64}}) {
    SCOPED_TRACE(name);
    auto f = SafetensorsFile::open(testing::shared_kvcache(name));
    ASSERT_TRUE(f.is_ok()) << f.status().to_string();
    EXPECT_EQ(f->entries().size(), 24u);  // k, v, q for 8 layers
    EXPECT_EQ(f->metadata().at("num_layers"), "8");
    EXPECT_EQ(f->metadata().at("rope_style"), "half");
    EXPECT_EQ(f->metadata().at("tokens"), std::to_string(n_tokens));
    for (int l = 0; l < 8; ++l) {
      const SafetensorsEntry* k = f->find("k." + std::to_string(l));
      const SafetensorsEntry* q = f->find("q." + std::to_string(l));
      ASSERT_NE(k, nullptr);
      ASSERT_NE(q, nullptr);
      EXPECT_EQ(k->dtype, "BF16");
      EXPECT_EQ(k->shape, (std::vector<int64_t>{2, n_tokens, 128}));
      EXPECT_EQ(q->shape, (std::vector<int64_t>{4, n_q, 128}));
    }
    // Data is what it should be: finite, not all zero, a plausible magnitude for keys.
    auto k3 = f->read_f32("k.3");
    ASSERT_TRUE(k3.is_ok());
    double sum_sq = 0;
    for (float x : k3.value()) {
      ASSERT_TRUE(std::isfinite(x));
      sum_sq += double(x) * x;
    }
    const double rms = std::sqrt(sum_sq / double(k3->size()));
    EXPECT_GT(rms, 0.05);
    EXPECT_LT(rms, 100.0);
  }
}

TEST(Safetensors, OpenMissingFileIsIoError) {
  auto f = SafetensorsFile::open(testing::temp_dir() + "/missing.safetensors");
  EXPECT_EQ(f.status().code(), StatusCode::kIo);
}

// Every prefix of a valid file is refused cleanly (no crash, no read past the end).
TEST(SafetensorsHostile, TruncatedAtEveryOffset) {
  WriterFixture w;
  const std::vector<uint8_t> bytes = serialize_safetensors(w.tensors(), w.metadata()).value();
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A fresh allocation of exactly n bytes, so that AddressSanitizer sees any overread.
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + long(n));
    auto f = SafetensorsFile::parse(std::move(prefix));
    ASSERT_FALSE(f.is_ok()) << "prefix of " << n << " bytes";
    EXPECT_EQ(f.status().code(), StatusCode::kCorrupt) << n << ": " << f.status().to_string();
  }
  EXPECT_TRUE(SafetensorsFile::parse_view(bytes.data(), bytes.size()).is_ok());
}

TEST(SafetensorsHostile, HeaderLength) {
  std::vector<uint8_t> bytes = raw_file("{}", 0);
  EXPECT_EQ(parse_code(bytes), StatusCode::kOk);  // an empty file is valid
  const uint64_t lengths[] = {3, uint64_t(1) << 40, ~uint64_t(0), ~uint64_t(0) - 7, 100000001};
  for (uint64_t len : lengths) {
    std::memcpy(bytes.data(), &len, 8);
    EXPECT_EQ(parse_code(bytes), StatusCode::kCorrupt) << len;
  }
  // Over the 100 MB limit while inside the file.
  std::vector<uint8_t> big(8 + 100000008, ' ');
  const uint64_t len = 100000008;
  std::memcpy(big.data(), &len, 8);
  big[8] = '{';
  big[9] = '}';
  EXPECT_EQ(parse_code(big), StatusCode::kCorrupt);
  EXPECT_EQ(SafetensorsFile::parse_view(nullptr, 0).status().code(), StatusCode::kCorrupt);
}

TEST(SafetensorsHostile, BadJson) {
  const char* headers[] = {
      "",           "{",          "[]",        "\"x\"",      "{\"a\":}",    "{\"a\" 1}",  "nul",
      "{}}",        "\xff\xfe{}", "{\"__metadata__\":{\"k\":\"\xc3\x28\"}}",  // invalid UTF-8
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",    // unterminated
  };
  for (const char* h : headers) EXPECT_EQ(parse_code(raw_file(h, 4)), StatusCode::kCorrupt) << h;
  // Deep nesting is refused quickly, without recursion.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(parse_code(raw_file(deep, 0)), StatusCode::kCorrupt);
  const std::string deep_meta = "{\"__metadata__\":{\"a\":" + std::string(50000, '{') + std::string(50000, '}') + "}}";
  EXPECT_EQ(parse_code(raw_file(deep_meta, 0)), StatusCode::kCorrupt);
}

TEST(SafetensorsHostile, BadEntries) {
  struct Case {
    const char* entry;
    size_t data_bytes;
    StatusCode code;
  };
  const Case cases[] = {
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8, StatusCode::kOk},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,12]})", 8, StatusCode::kCorrupt},   // past the data
      {R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})", 8, StatusCode::kCorrupt},    // begin > end
      {R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},    // wrong size
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"BF16","shape":[2],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},   // negative
      {R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},  // float
      {R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","data_offsets":[0,8]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,8.5]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":7,"shape":[2],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},
      {R"({"shape":[2],"data_offsets":[0,8]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})", 8, StatusCode::kUnsupported},
      {R"([1,2])", 8, StatusCode::kCorrupt},
      {R"("F32")", 8, StatusCode::kCorrupt},
      // Element counts whose byte size overflows 64 bits must not wrap around to a small number.
      {R"({"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,7]})", 8, StatusCode::kCorrupt},
      {R"({"dtype":"F32","shape":[0,1000000000000],"data_offsets":[0,0]})", 8, StatusCode::kOk},
      {R"({"dtype":"F32","shape":[],"data_offsets":[4,8]})", 8, StatusCode::kOk},  // scalar
  };
  for (const Case& c : cases) {
    const std::string header = std::string("{\"t\":") + c.entry + "}";
    EXPECT_EQ(parse_code(raw_file(header, c.data_bytes)), c.code) << c.entry;
  }
}

TEST(SafetensorsHostile, MetadataMustBeStrings) {
  const char* headers[] = {
      R"({"__metadata__":{"a":1}})",     R"({"__metadata__":{"a":null}})", R"({"__metadata__":{"a":["x"]}})",
      R"({"__metadata__":{"a":{"b":"c"}}})", R"({"__metadata__":"x"})",    R"({"__metadata__":[]})",
  };
  for (const char* h : headers) EXPECT_EQ(parse_code(raw_file(h, 0)), StatusCode::kCorrupt) << h;
  auto ok = SafetensorsFile::parse(raw_file(R"({"__metadata__":{"a":"1","b":""}})", 0));
  ASSERT_TRUE(ok.is_ok());
  EXPECT_EQ(ok->metadata().at("a"), "1");
  EXPECT_EQ(ok->metadata().at("b"), "");
}

// Random byte flips of a valid file: any outcome but a crash. Successful parses must stay readable.
TEST(SafetensorsHostile, RandomCorruptionNeverCrashes) {
  WriterFixture w;
  const std::vector<uint8_t> bytes = serialize_safetensors(w.tensors(), w.metadata()).value();
  uint64_t state = 12345;
  auto next = [&] { return state = state * 6364136223846793005ull + 1442695040888963407ull, state >> 33; };
  int parsed = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<uint8_t> b = bytes;
    const int n_flips = 1 + int(next() % 4);
    for (int i = 0; i < n_flips; ++i) b[next() % b.size()] = uint8_t(next());
    auto f = SafetensorsFile::parse(std::move(b));
    if (!f.is_ok()) continue;
    ++parsed;
    for (const auto& e : f->entries()) {
      auto v = f->read_f32(e.name);
      if (v.is_ok()) {
        ASSERT_EQ(int64_t(v->size()), e.n_elements());
      } else {
        EXPECT_EQ(v.status().code(), StatusCode::kUnsupported);
      }
    }
  }
  EXPECT_GT(parsed, 0);  // flips in the data section leave a valid file
}

TEST(SafetensorsWriter, RejectsBadInput) {
  std::vector<float> v(4);
  const std::map<std::string, std::string> none;
  EXPECT_EQ(serialize_safetensors({{"a", DType::kF32, {4}, v.data()}, {"a", DType::kF32, {4}, v.data()}}, none)
                .status().code(), StatusCode::kInvalidArgument);  // duplicate name
  EXPECT_EQ(serialize_safetensors({{"__metadata__", DType::kF32, {4}, v.data()}}, none).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(serialize_safetensors({{"a", DType::kF32, {-1}, v.data()}}, none).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(serialize_safetensors({{"a", DType::kF32, {4}, nullptr}}, none).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(serialize_safetensors({{"a\xff", DType::kF32, {4}, v.data()}}, none).status().code(),
            StatusCode::kInvalidArgument);  // not UTF-8: JSON cannot hold it
  // Names that need JSON escaping survive.
  auto ok = serialize_safetensors({{"q\"uote\\d\n", DType::kF32, {4}, v.data()}}, {{"k\"", "v\n"}});
  ASSERT_TRUE(ok.is_ok());
  auto f = SafetensorsFile::parse(std::move(ok).value());
  ASSERT_TRUE(f.is_ok());
  EXPECT_NE(f->find("q\"uote\\d\n"), nullptr);
  EXPECT_EQ(f->metadata().at("k\""), "v\n");
}

}  // namespace
}  // namespace kvtc
