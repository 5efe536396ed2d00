// The GGUF reader (engine/gguf.cpp, gguf_dequant.cpp): dequantisation bit for bit against gguf-py
// (tests/data/gguf_ref.gguf, written by tests/data/make_gguf_ref.py), metadata of every value type,
// tensor layout, hand-made hostile files, and the real SmolLM2 model when it is installed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "engine/gguf.hpp"
#include "util/half.hpp"

namespace kvtc::engine {
namespace {

std::string ref_path() { return std::string(KVTC_SOURCE_DIR) + "/tests/data/gguf_ref.gguf"; }

const GgufFile& ref_file() {
  static const GgufFile* f = [] {
    auto r = GgufFile::open(ref_path());
    if (!r.is_ok()) {
      ADD_FAILURE() << r.status().to_string();
      std::abort();
    }
    return new GgufFile(std::move(r).value());
  }();
  return *f;
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The types make_gguf_ref.py writes a <name>.raw / <name>.expected pair for.
const std::pair<const char*, GgmlType> kRefTypes[] = {
    {"f32", GgmlType::kF32},   {"f16", GgmlType::kF16},   {"bf16", GgmlType::kBF16}, {"q8_0", GgmlType::kQ8_0},
    {"q4_0", GgmlType::kQ4_0}, {"q4_1", GgmlType::kQ4_1}, {"q5_0", GgmlType::kQ5_0}, {"q5_1", GgmlType::kQ5_1},
    {"q4_k", GgmlType::kQ4_K}, {"q5_k", GgmlType::kQ5_K}, {"q6_k", GgmlType::kQ6_K},
};

TEST(EngineGguf, DequantisationMatchesGgufPyBitForBit) {
  const GgufFile& f = ref_file();
  for (const auto& [name, type] : kRefTypes) {
    SCOPED_TRACE(name);
    const GgufTensorInfo* raw = f.find_tensor(std::string(name) + ".raw");
    const GgufTensorInfo* expected = f.find_tensor(std::string(name) + ".expected");
    ASSERT_NE(raw, nullptr);
    ASSERT_NE(expected, nullptr);
    EXPECT_EQ(raw->type, uint32_t(type));
    EXPECT_EQ(expected->type, uint32_t(GgmlType::kF32));
    EXPECT_EQ(raw->shape(), expected->shape());
    EXPECT_TRUE(gguf_can_dequantize(raw->type));
    const int64_t n = raw->n_elements();
    ASSERT_GE(n, 24);

    std::vector<float> got(size_t(n), -1.0f);
    ASSERT_TRUE(f.read_f32_into(*raw, got.data()).is_ok());
    std::vector<float> want(static_cast<size_t>(n));
    std::memcpy(want.data(), f.tensor_data(*expected), size_t(n) * 4);
    int mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (bits_of(got[size_t(i)]) != bits_of(want[size_t(i)]) && ++mismatches <= 5)
        ADD_FAILURE() << name << "[" << i << "]: got " << got[size_t(i)] << " (0x" << std::hex << bits_of(got[size_t(i)])
                      << "), gguf-py " << want[size_t(i)] << " (0x" << bits_of(want[size_t(i)]) << std::dec << ")";
    }
    EXPECT_EQ(mismatches, 0);

    // The free function on the raw bytes gives the same, and refuses a buffer one byte short.
    std::vector<float> direct(static_cast<size_t>(n));
    ASSERT_TRUE(gguf_dequantize(raw->type, f.tensor_data(*raw), raw->size_bytes, n, direct.data()).is_ok());
    EXPECT_EQ(0, std::memcmp(direct.data(), got.data(), size_t(n) * 4));
    const Status short_src = gguf_dequantize(raw->type, f.tensor_data(*raw), raw->size_bytes - 1, n, direct.data());
    EXPECT_EQ(short_src.code(), StatusCode::kCorrupt) << short_src.to_string();
  }
}

TEST(EngineGguf, UnsupportedDequantisationNamesTheType) {
  const GgufFile& f = ref_file();
  const GgufTensorInfo* q2 = f.find_tensor("q2_k.raw");
  ASSERT_NE(q2, nullptr);
  EXPECT_EQ(q2->type, uint32_t(GgmlType::kQ2_K));
  EXPECT_FALSE(gguf_can_dequantize(q2->type));
  std::vector<float> out(size_t(q2->n_elements()));
  const Status s = f.read_f32_into(*q2, out.data());
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_TRUE(contains(s.message(), "Q2_K")) << s.message();
  EXPECT_TRUE(contains(s.message(), "q2_k.raw")) << s.message();
  EXPECT_TRUE(contains(s.message(), "Q6_K")) << "lists the supported types: " << s.message();

  const uint8_t block[256] = {};
  const Status iq = gguf_dequantize(uint32_t(GgmlType::kIQ2_XXS), block, sizeof block, 256, out.data());
  EXPECT_EQ(iq.code(), StatusCode::kUnsupported);
  EXPECT_TRUE(contains(iq.message(), "IQ2_XXS")) << iq.message();
  const Status unknown = gguf_dequantize(99, block, sizeof block, 1, out.data());
  EXPECT_EQ(unknown.code(), StatusCode::kUnsupported);
  EXPECT_TRUE(contains(unknown.message(), "type 99")) << unknown.message();
  // A count that is not whole blocks is the caller's mistake.
  EXPECT_EQ(gguf_dequantize(uint32_t(GgmlType::kQ8_0), block, sizeof block, 31, out.data()).code(),
            StatusCode::kInvalidArgument);
}

TEST(EngineGguf, HandMadeBlocksDequantiseToKnownValues) {
  // Independent of gguf-py: Q8_0 with d = 1.5 and q = j - 16; Q4_0 with d = -0.5 and nibbles j.
  uint8_t q8[34];
  const uint16_t d8 = f32_to_f16(1.5f);
  std::memcpy(q8, &d8, 2);
  for (int j = 0; j < 32; ++j) q8[2 + j] = uint8_t(int8_t(j - 16));
  float out[32];
  ASSERT_TRUE(gguf_dequantize(uint32_t(GgmlType::kQ8_0), q8, sizeof q8, 32, out).is_ok());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 1.5f * float(j - 16)) << j;

  uint8_t q4[18];
  const uint16_t d4 = f32_to_f16(-0.5f);
  std::memcpy(q4, &d4, 2);
  for (int j = 0; j < 16; ++j) q4[2 + j] = uint8_t(j | ((15 - j) << 4));
  ASSERT_TRUE(gguf_dequantize(uint32_t(GgmlType::kQ4_0), q4, sizeof q4, 32, out).is_ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], -0.5f * float(j - 8)) << j;
    EXPECT_EQ(out[j + 16], -0.5f * float(7 - j)) << j;
  }
}

TEST(EngineGguf, MetadataOfEveryValueType) {
  const GgufFile& f = ref_file();
  EXPECT_EQ(f.version(), 3u);
  auto scalar = [&](const char* key, GgufValueType type) -> const GgufValue& {
    const GgufValue* v = f.find(key);
    static const GgufValue kNone;
    if (v == nullptr) {
      ADD_FAILURE() << key << " missing";
      return kNone;
    }
    EXPECT_EQ(v->type, type) << key;
    return *v;
  };
  EXPECT_EQ(scalar("test.u8", GgufValueType::kUint8).i, 255);
  EXPECT_EQ(scalar("test.i8", GgufValueType::kInt8).i, -128);
  EXPECT_EQ(scalar("test.u16", GgufValueType::kUint16).i, 65535);
  EXPECT_EQ(scalar("test.i16", GgufValueType::kInt16).i, -32768);
  EXPECT_EQ(scalar("test.u32", GgufValueType::kUint32).i, 4294967295LL);
  EXPECT_EQ(scalar("test.i32", GgufValueType::kInt32).i, -2147483648LL);
  EXPECT_EQ(scalar("test.f32", GgufValueType::kFloat32).f, double(0.1f));
  EXPECT_EQ(scalar("test.u64", GgufValueType::kUint64).i, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(scalar("test.i64", GgufValueType::kInt64).i, std::numeric_limits<int64_t>::min());
  EXPECT_EQ(scalar("test.f64", GgufValueType::kFloat64).f, 3.141592653589793);
  EXPECT_EQ(scalar("test.bool_true", GgufValueType::kBool).i, 1);
  EXPECT_EQ(scalar("test.bool_false", GgufValueType::kBool).i, 0);
  EXPECT_EQ(scalar("test.string", GgufValueType::kString).s, "h\xc3\xa9llo \xe2\x9c\x93");
  EXPECT_EQ(scalar("test.empty_string", GgufValueType::kString).s, "");
  EXPECT_EQ(scalar("general.architecture", GgufValueType::kString).s, "kvtc-test");

  auto array = [&](const char* key, GgufValueType elem) -> const GgufValue& {
    const GgufValue& v = scalar(key, GgufValueType::kArray);
    EXPECT_TRUE(v.is_array_of(elem)) << key;
    return v;
  };
  EXPECT_EQ(array("test.arr_u8", GgufValueType::kUint8).ints, (std::vector<int64_t>{0, 1, 255}));
  EXPECT_EQ(array("test.arr_i16", GgufValueType::kInt16).ints, (std::vector<int64_t>{-32768, 0, 32767}));
  EXPECT_EQ(array("test.arr_i32", GgufValueType::kInt32).ints, (std::vector<int64_t>{1, -2, 3, 2147483647}));
  EXPECT_EQ(array("test.arr_u64", GgufValueType::kUint64).ints,
            (std::vector<int64_t>{0, std::numeric_limits<int64_t>::max()}));
  EXPECT_EQ(array("test.arr_i64", GgufValueType::kInt64).ints,
            (std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 5}));
  EXPECT_EQ(array("test.arr_f32", GgufValueType::kFloat32).floats,
            (std::vector<double>{0.5, -1.25, double(0.1f)}));
  EXPECT_EQ(array("test.arr_f64", GgufValueType::kFloat64).floats, (std::vector<double>{2.5, -1e300}));
  EXPECT_EQ(array("test.arr_str", GgufValueType::kString).strings,
            (std::vector<std::string>{"a", "", "\xc3\xbc\xe2\x9c\x93", "tok en"}));
  EXPECT_EQ(array("test.arr_bool", GgufValueType::kBool).ints, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(f.find("test.arr_str")->array_size(), 4u);
  EXPECT_EQ(f.find("test.arr_f64")->array_size(), 2u);
  EXPECT_EQ(f.find("test.u8")->array_size(), 0u);
  EXPECT_EQ(f.find("no.such.key"), nullptr);
}

TEST(EngineGguf, TypedGetters) {
  const GgufFile& f = ref_file();
  EXPECT_EQ(f.get_int("test.u32").value(), 4294967295LL);
  EXPECT_EQ(f.get_int("test.i8").value(), -128);
  EXPECT_EQ(f.get_float("test.f64").value(), 3.141592653589793);
  EXPECT_EQ(f.get_float("test.i16").value(), -32768.0);  // integers are accepted as numbers
  EXPECT_EQ(f.get_bool("test.bool_true").value(), true);
  EXPECT_EQ(f.get_string("general.architecture").value(), "kvtc-test");
  EXPECT_EQ(f.get_int_or("absent.key", 7).value(), 7);
  EXPECT_EQ(f.get_float_or("absent.key", 0.25).value(), 0.25);
  EXPECT_EQ(f.get_bool_or("absent.key", true).value(), true);
  EXPECT_EQ(f.get_int_or("test.i64", 7).value(), std::numeric_limits<int64_t>::min());

  const auto absent = f.get_string("absent.key");
  EXPECT_EQ(absent.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(absent.status().message(), "absent.key")) << absent.status().message();
  const auto wrong = f.get_int("test.string");
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(wrong.status().message(), "test.string")) << wrong.status().message();
  EXPECT_FALSE(f.get_float("test.arr_f32").is_ok());
  EXPECT_FALSE(f.get_bool("test.u8").is_ok());
  EXPECT_FALSE(f.get_string("test.arr_str").is_ok());
  // A present key of another type is an error even with a fallback.
  EXPECT_FALSE(f.get_int_or("test.string", 7).is_ok());
  EXPECT_FALSE(f.get_bool_or("test.f32", false).is_ok());
}

TEST(EngineGguf, ShapesOffsetsAndAlignment) {
  const GgufFile& f = ref_file();
  EXPECT_EQ(f.alignment_bytes(), 32u);
  EXPECT_EQ(f.tensors().size(), 2 * std::size(kRefTypes) + 1);
  const GgufTensorInfo* q8 = f.find_tensor("q8_0.raw");
  ASSERT_NE(q8, nullptr);
  EXPECT_EQ(q8->dims, (std::vector<int64_t>{64, 2, 3}));   // ne[], innermost first
  EXPECT_EQ(q8->shape(), (std::vector<int64_t>{3, 2, 64}));  // row-major, as the script wrote it
  EXPECT_EQ(q8->n_elements(), 384);
  EXPECT_EQ(q8->size_bytes, 12u * 34u);
  const GgufTensorInfo* f16 = f.find_tensor("f16.raw");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->shape(), (std::vector<int64_t>{2, 3, 8}));
  EXPECT_EQ(f16->size_bytes, 96u);
  EXPECT_EQ(f.find_tensor("no such tensor"), nullptr);

  // Tensors lie in file order, each at a multiple of 32 bytes of the data section, without overlap,
  // and the data section itself starts at a multiple of 32 in the file.
  const uint8_t* base = f.tensor_data(f.tensors()[0]) - f.tensors()[0].offset_bytes;
  uint64_t end = 0;
  for (const GgufTensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.offset_bytes % 32, 0u) << t.name;
    EXPECT_GE(t.offset_bytes, end) << t.name;
    EXPECT_EQ(f.tensor_data(t), base + t.offset_bytes) << t.name;
    end = t.offset_bytes + t.size_bytes;
  }
  const auto size = std::filesystem::file_size(ref_path());
  EXPECT_LE(end, size);
  // make_gguf_ref.py wrote f32.raw's bytes from these values: -0, 1e-40, then normals.
  const GgufTensorInfo* f32 = f.find_tensor("f32.raw");
  ASSERT_NE(f32, nullptr);
  float first[2];
  std::memcpy(first, f.tensor_data(*f32), sizeof first);
  EXPECT_EQ(bits_of(first[0]), 0x80000000u);
  EXPECT_EQ(first[1], 1e-40f);
}

TEST(EngineGguf, BlockGeometryOfEveryType) {
  struct Want { GgmlType type; const char* name; int64_t elements, bytes; };
  const Want kWant[] = {
      {GgmlType::kF32, "F32", 1, 4},          {GgmlType::kF16, "F16", 1, 2},          {GgmlType::kQ4_0, "Q4_0", 32, 18},
      {GgmlType::kQ4_1, "Q4_1", 32, 20},      {GgmlType::kQ5_0, "Q5_0", 32, 22},      {GgmlType::kQ5_1, "Q5_1", 32, 24},
      {GgmlType::kQ8_0, "Q8_0", 32, 34},      {GgmlType::kQ8_1, "Q8_1", 32, 36},      {GgmlType::kQ2_K, "Q2_K", 256, 84},
      {GgmlType::kQ3_K, "Q3_K", 256, 110},    {GgmlType::kQ4_K, "Q4_K", 256, 144},    {GgmlType::kQ5_K, "Q5_K", 256, 176},
      {GgmlType::kQ6_K, "Q6_K", 256, 210},    {GgmlType::kQ8_K, "Q8_K", 256, 292},    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 66},
      {GgmlType::kIQ2_XS, "IQ2_XS", 256, 74}, {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 98}, {GgmlType::kIQ1_S, "IQ1_S", 256, 50},
      {GgmlType::kIQ4_NL, "IQ4_NL", 32, 18},  {GgmlType::kIQ3_S, "IQ3_S", 256, 110},  {GgmlType::kIQ2_S, "IQ2_S", 256, 82},
      {GgmlType::kIQ4_XS, "IQ4_XS", 256, 136}, {GgmlType::kI8, "I8", 1, 1},            {GgmlType::kI16, "I16", 1, 2},
      {GgmlType::kI32, "I32", 1, 4},          {GgmlType::kI64, "I64", 1, 8},          {GgmlType::kF64, "F64", 1, 8},
      {GgmlType::kIQ1_M, "IQ1_M", 256, 56},   {GgmlType::kBF16, "BF16", 1, 2},        {GgmlType::kTQ1_0, "TQ1_0", 256, 54},
      {GgmlType::kTQ2_0, "TQ2_0", 256, 66},   {GgmlType::kMXFP4, "MXFP4", 32, 17},
  };
  for (const Want& w : kWant) {
    const auto b = ggml_block(uint32_t(w.type));
    ASSERT_TRUE(b.is_ok()) << w.name;
    EXPECT_EQ(b->block_elements, w.elements) << w.name;
    EXPECT_EQ(b->block_bytes, w.bytes) << w.name;
    EXPECT_EQ(ggml_type_name(uint32_t(w.type)), w.name);
  }
  for (uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 1000u}) {
    const auto b = ggml_block(removed);
    EXPECT_EQ(b.status().code(), StatusCode::kUnsupported) << removed;
    EXPECT_TRUE(contains(b.status().message(), std::to_string(removed))) << b.status().message();
    EXPECT_EQ(ggml_type_name(removed), "type " + std::to_string(removed));
  }
}

// ---- Hand-made files ----

// Writes GGUF fields in little-endian order.
struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& raw(const std::vector<uint8_t>& r) {
    b.insert(b.end(), r.begin(), r.end());
    return *this;
  }
};

std::vector<uint8_t> kv_string(const std::string& key, const std::string& value) {
  return Bytes().str(key).u32(uint32_t(GgufValueType::kString)).str(value).b;
}
std::vector<uint8_t> kv_u32(const std::string& key, uint32_t value) {
  return Bytes().str(key).u32(uint32_t(GgufValueType::kUint32)).u32(value).b;
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> ne;
  uint32_t type;
  uint64_t offset_bytes;
};

// A small valid file by default: two metadata entries and two tensors (F32 [4] at 0; Q8_0 [2][32] at
// 32, d = 1 and q = j - 16), data section ending right after the last tensor, so that every strict
// prefix of the file is invalid. Fields can be changed to make it invalid in one way.
struct MiniFile {
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  std::vector<std::vector<uint8_t>> kvs = {kv_string("general.architecture", "llama"), kv_u32("llama.block_count", 2)};
  std::vector<TensorSpec> tensors = {{"a", {4}, uint32_t(GgmlType::kF32), 0},
                                     {"b", {32, 2}, uint32_t(GgmlType::kQ8_0), 32}};
  uint64_t alignment_bytes = 32;  // how the writer pads before the data section
  std::optional<uint64_t> n_tensors, n_kv;  // override the counts in the header

  std::vector<uint8_t> build() const {
    Bytes out;
    out.u32(magic).u32(version).u64(n_tensors.value_or(tensors.size())).u64(n_kv.value_or(kvs.size()));
    for (const auto& kv : kvs) out.raw(kv);
    for (const auto& t : tensors) {
      out.str(t.name).u32(uint32_t(t.ne.size()));
      for (int64_t d : t.ne) out.put(d);
      out.u32(t.type).u64(t.offset_bytes);
    }
    while (out.b.size() % alignment_bytes != 0) out.b.push_back(0);
    for (float v : {1.0f, -2.0f, 0.5f, 3.0f}) out.put(v);
    out.b.resize(out.b.size() + 16, 0);  // padding to data offset 32
    for (int block = 0; block < 2; ++block) {
      out.put(uint16_t(0x3c00));  // fp16 1.0
      for (int j = 0; j < 32; ++j) out.put(int8_t(j - 16));
    }
    return out.b;
  }
};

Result<GgufFile> parse(const std::vector<uint8_t>& bytes) { return GgufFile::parse_view(bytes.data(), bytes.size()); }

// The status of parsing, and its message in failure output.
::testing::AssertionResult fails_with(const std::vector<uint8_t>& bytes, StatusCode code, const std::string& needle) {
  const auto r = parse(bytes);
  if (r.is_ok()) return ::testing::AssertionFailure() << "parsed OK";
  if (r.status().code() != code || !contains(r.status().message(), needle))
    return ::testing::AssertionFailure() << r.status().to_string() << " (wanted " << status_code_name(code)
                                         << " mentioning \"" << needle << "\")";
  return ::testing::AssertionSuccess() << r.status().to_string();
}

TEST(EngineGgufMalformed, TheBaselineMiniFileIsValid) {
  const std::vector<uint8_t> bytes = MiniFile().build();
  const auto r = parse(bytes);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->get_string("general.architecture").value(), "llama");
  ASSERT_EQ(r->tensors().size(), 2u);
  std::vector<float> a(4), b(64);
  ASSERT_TRUE(r->read_f32_into(r->tensors()[0], a.data()).is_ok());
  EXPECT_EQ(a, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f}));
  ASSERT_TRUE(r->read_f32_into(*r->find_tensor("b"), b.data()).is_ok());
  for (int i = 0; i < 64; ++i) EXPECT_EQ(b[size_t(i)], float(i % 32 - 16)) << i;
  EXPECT_EQ(r->find_tensor("b")->shape(), (std::vector<int64_t>{2, 32}));
}

TEST(EngineGgufMalformed, EveryTruncationFails) {
  const std::vector<uint8_t> bytes = MiniFile().build();
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + std::ptrdiff_t(n));
    const auto r = parse(cut);
    EXPECT_FALSE(r.is_ok()) << "prefix of " << n << " bytes parsed";
    if (!r.is_ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kCorrupt) << n << ": " << r.status().to_string();
    }
  }
  EXPECT_FALSE(GgufFile::parse_view(nullptr, 0).is_ok());
}

TEST(EngineGgufMalformed, MagicAndVersion) {
  MiniFile m;
  m.magic = 0x58554747;  // "GGUX"
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "not a GGUF file"));
  m = MiniFile();
  m.version = 1;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kUnsupported, "version 1"));
  m.version = 4;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kUnsupported, "version 4"));
  m.version = 0x03000000;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kUnsupported, "big-endian"));
  m.version = 2;  // same layout as 3
  const auto r = parse(m.build());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->version(), 2u);
}

TEST(EngineGgufMalformed, HugeCountsAndLengths) {
  MiniFile m;
  m.n_tensors = uint64_t(1) << 62;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "tensors"));
  m = MiniFile();
  m.n_kv = ~uint64_t(0);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "metadata entries"));
  m = MiniFile();
  m.n_kv = 3;  // one more than present: the tensor infos are read as a metadata entry and fail
  EXPECT_FALSE(parse(m.build()).is_ok());

  m = MiniFile();
  m.kvs.push_back(Bytes().u64(uint64_t(1) << 63).b);  // a key claiming 2^63 bytes
  m.kvs.push_back(kv_u32("x", 1));
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "claims 9223372036854775808 bytes"));
  m = MiniFile();
  m.kvs.push_back(Bytes().str("big.string").u32(uint32_t(GgufValueType::kString)).u64(~uint64_t(0)).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "big.string"));
  m = MiniFile();
  m.kvs.push_back(Bytes().str("big.array").u32(uint32_t(GgufValueType::kArray)).u32(uint32_t(GgufValueType::kUint32))
                      .u64(uint64_t(1) << 60).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "big.array"));
  m = MiniFile();
  m.kvs.push_back(Bytes().str("big.strings").u32(uint32_t(GgufValueType::kArray)).u32(uint32_t(GgufValueType::kString))
                      .u64(3).str("a").u64(1 << 20).b);  // the second string runs past the end
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "big.strings"));
  m = MiniFile();
  m.tensors[0].name = std::string(40, 'n');
  m.tensors[0].ne = {int64_t(1) << 32, int64_t(1) << 32};  // 2^64 elements
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "too many elements"));
}

TEST(EngineGgufMalformed, MetadataValues) {
  MiniFile m;
  m.kvs.push_back(Bytes().str("nested").u32(uint32_t(GgufValueType::kArray)).u32(uint32_t(GgufValueType::kArray)).u64(1)
                      .u32(uint32_t(GgufValueType::kUint8)).u64(1).put(uint8_t(0)).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kUnsupported, "nested"));
  m = MiniFile();
  m.kvs.push_back(Bytes().str("odd.type").u32(13).u32(0).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "odd.type"));
  m = MiniFile();
  m.kvs.push_back(Bytes().str("odd.elem").u32(uint32_t(GgufValueType::kArray)).u32(77).u64(1).u32(0).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "odd.elem"));
  m = MiniFile();
  m.kvs.push_back(Bytes().str("huge.u64").u32(uint32_t(GgufValueType::kUint64)).u64(~uint64_t(0)).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "huge.u64"));
  m = MiniFile();
  m.kvs.push_back(kv_u32("llama.block_count", 3));
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "\"llama.block_count\" appears twice"));
}

TEST(EngineGgufMalformed, Alignment) {
  MiniFile m;
  m.kvs.push_back(kv_u32("general.alignment", 64));
  m.alignment_bytes = 64;  // "b" stays at data offset 32, no longer a multiple of the alignment
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "not a multiple of the file's alignment of 64"));
  // Valid with 64: "a" at 0, "b" at 0 as well (tensors may share bytes; the reader only bounds them).
  m.tensors[1].offset_bytes = 0;
  const std::vector<uint8_t> bytes = m.build();
  const auto r = parse(bytes);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->alignment_bytes(), 64u);
  const uint8_t* data = r->tensor_data(r->tensors()[0]);
  EXPECT_EQ((data - bytes.data()) % 64, 0);
  float first;
  std::memcpy(&first, data, 4);
  EXPECT_EQ(first, 1.0f);

  for (uint32_t bad : {0u, 48u, 3u}) {
    m = MiniFile();
    m.kvs.push_back(kv_u32("general.alignment", bad));
    EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "general.alignment")) << bad;
  }
  m = MiniFile();
  m.kvs.push_back(Bytes().str("general.alignment").u32(uint32_t(GgufValueType::kUint64)).u64(32).b);
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "not a uint32"));
}

TEST(EngineGgufMalformed, TensorInfos) {
  MiniFile m;
  m.tensors[1].offset_bytes = 33;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "tensor \"b\" starts at data offset 33"));
  m.tensors[1].offset_bytes = uint64_t(1) << 40;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "tensor \"b\""));
  m.tensors[1].offset_bytes = ~uint64_t(31);  // aligned, and offset + size wraps around
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "runs past the end of the data section"));
  m.tensors[1].offset_bytes = 64;  // one block past the data
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "runs past the end of the data section"));

  m = MiniFile();
  m.tensors[1].name = "a";
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "\"a\" appears twice"));
  m = MiniFile();
  m.tensors[1].type = 99;
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kUnsupported, "ggml type 99"));
  m.tensors[1].type = 4;  // Q4_2, removed from ggml in 2023
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kUnsupported, "ggml type 4"));
  m = MiniFile();
  m.tensors[1].ne = {33, 2};
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "Q8_0's block of 32"));
  m.tensors[1].ne = {32, 0};
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, ">= 1"));
  m.tensors[1].ne = {32, -2};
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, ">= 1"));
  m.tensors[1].ne = {};
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "0 dimensions"));
  m.tensors[1].ne = {32, 1, 1, 1, 2};
  EXPECT_TRUE(fails_with(m.build(), StatusCode::kCorrupt, "5 dimensions"));
  m.tensors[1].ne = {32, 1, 1, 2};  // four dimensions are fine
  EXPECT_TRUE(parse(m.build()).is_ok());
}

TEST(EngineGgufMalformed, OpenReportsMissingFiles) {
  const auto missing = GgufFile::open("/nonexistent/model.gguf");
  EXPECT_EQ(missing.status().code(), StatusCode::kIo);
  EXPECT_TRUE(contains(missing.status().message(), "/nonexistent/model.gguf"));
  EXPECT_EQ(GgufFile::open(std::string(KVTC_SOURCE_DIR) + "/tests").status().code(), StatusCode::kIo);
  // A non-GGUF file: the message names the path.
  const auto other = GgufFile::open(std::string(KVTC_SOURCE_DIR) + "/tests/data/engine_ref_meta.json");
  EXPECT_EQ(other.status().code(), StatusCode::kCorrupt);
  EXPECT_TRUE(contains(other.status().message(), "engine_ref_meta.json")) << other.status().message();
}

// ---- The real model ----

// KVTC_GGUF_MODEL, or the copy scripts/models.sh installs. Empty (with the reason in *why) when neither
// is a file.
std::string real_model_path(std::string* why) {
  if (const char* env = std::getenv("KVTC_GGUF_MODEL"); env != nullptr && *env != '\0') {
    if (std::filesystem::is_regular_file(env)) return env;
    *why = std::string("KVTC_GGUF_MODEL=") + env + " is not a file";
    return "";
  }
  const std::string installed = std::string(KVTC_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (std::filesystem::is_regular_file(installed)) return installed;
  *why = "no GGUF model: set KVTC_GGUF_MODEL to SmolLM2-135M-Instruct.Q4_1.gguf, or install it into models/ with "
         "scripts/models.sh";
  return "";
}

TEST(EngineGgufRealModel, SmolLM2Q4_1) {
  std::string why;
  const std::string path = real_model_path(&why);
  if (path.empty()) GTEST_SKIP() << why;
  const auto r = GgufFile::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const GgufFile& f = *r;
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.get_string("general.architecture").value(), "llama");
  EXPECT_EQ(f.get_int("llama.block_count").value(), 30);
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->array_size(), 49152u);

  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->shape(), (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(embd->type, uint32_t(GgmlType::kQ8_0));

  const GgufTensorInfo* q = f.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  std::vector<float> w(size_t(q->n_elements()));
  ASSERT_TRUE(f.read_f32_into(*q, w.data()).is_ok());
  double sum_sq = 0.0;
  for (float x : w) {
    ASSERT_TRUE(std::isfinite(x));
    sum_sq += double(x) * x;
  }
  EXPECT_GT(sum_sq, 0.0);
}

}  // namespace
}  // namespace kvtc::engine
