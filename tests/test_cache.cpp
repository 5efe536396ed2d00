// Cache files: the layout rules of docs/CACHE_LAYOUT.md, metadata, validation, and crash-safe writes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "format/safetensors.hpp"
#include "test_util.hpp"
#include "util/file_io.hpp"
#include "util/half.hpp"

namespace kvtc {
namespace {

namespace fs = std::filesystem;

ModelShape small_shape() {
  ModelShape s;
  s.n_layers = 3;
  s.n_kv_heads = 2;
  s.head_dim = 8;
  s.rope.theta = 10000.0;
  return s;
}

// A small cache with q tensors, in `dtype`.
KVCache small_cache(DType dtype, RopeStyle style = RopeStyle::kHalf) {
  ModelShape s = small_shape();
  s.rope.style = style;
  KVCache c = testing::synthetic_cache(s, 5, 42, dtype);
  c.n_heads = 4;
  c.n_query = 2;
  c.q.assign(3, std::vector<float>(4 * 2 * 8));
  for (int l = 0; l < 3; ++l)
    for (size_t i = 0; i < c.q[l].size(); ++i) c.q[l][i] = float(int(i) - 30 + l) * 0.25f;  // exact in all dtypes
  c.model_name = "tiny";
  c.sync_metadata();
  return c;
}

// The tensors and metadata of a cache file, editable, then written out as raw safetensors bytes. Used to
// make files that break one rule at a time.
struct RawCacheFile {
  struct Tensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Tensor> tensors;
  std::map<std::string, std::string> metadata;

  explicit RawCacheFile(const KVCache& c) {
    auto f = SafetensorsFile::parse(serialize_cache(c).value()).value();
    metadata = f.metadata();
    for (const auto& e : f.entries())
      tensors.push_back({e.name, e.dtype, e.shape, std::vector<uint8_t>(f.data(e), f.data(e) + e.size_bytes)});
  }
  Tensor* find(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  void erase(const std::string& name) {
    std::erase_if(tensors, [&](const Tensor& t) { return t.name == name; });
  }
  std::vector<uint8_t> bytes() const {
    nlohmann::ordered_json h;
    h["__metadata__"] = metadata;
    uint64_t off = 0;
    for (const auto& t : tensors) {
      h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
      off += t.bytes.size();
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<uint8_t> out(8 + text.size() + off);
    const uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) out[i] = uint8_t(n >> (8 * i));
    auto dst = std::copy(text.begin(), text.end(), out.begin() + 8);
    for (const auto& t : tensors) dst = std::copy(t.bytes.begin(), t.bytes.end(), dst);
    return out;
  }
  Status parse() const {
    const auto b = bytes();
    return parse_cache(b.data(), b.size()).status();
  }
};

void expect_caches_equal(const KVCache& a, const KVCache& b) {
  EXPECT_TRUE(a.shape == b.shape) << a.shape.to_string() << " vs " << b.shape.to_string();
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.n_tokens, b.n_tokens);
  EXPECT_EQ(a.position_offset, b.position_offset);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_query, b.n_query);
  EXPECT_EQ(a.model_name, b.model_name);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
  EXPECT_EQ(a.q, b.q);
}

TEST(Cache, ReadsRealSmallTest) {
  auto c = read_cache(testing::shared_kvcache("small-test.safetensors"));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->shape.n_layers, 8);
  EXPECT_EQ(c->shape.n_kv_heads, 2);
  EXPECT_EQ(c->shape.head_dim, 128);
  EXPECT_EQ(c->shape.rope.theta, 100000.0);
  EXPECT_EQ(c->shape.rope.style, RopeStyle::kHalf);
  EXPECT_EQ(c->shape.rope.llama3_factor, 0.0);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->n_tokens, 512);
  EXPECT_EQ(c->position_offset, 0);
  EXPECT_EQ(c->n_heads, 4);
  EXPECT_EQ(c->n_query, 32);
  EXPECT_EQ(c->model_name, "kvtc-ref-26m");
  EXPECT_EQ(c->metadata.at("source"), "code.test.txt.xz");  // keys kvtc does not use are kept
  EXPECT_EQ(c->shape.to_string(), "8 layers x 2 kv heads x 128, rope half theta 100000");
  EXPECT_TRUE(c->validate().is_ok());
  // Row accessors address [head][token][dim] of the file's tensors.
  auto f = SafetensorsFile::open(testing::shared_kvcache("small-test.safetensors")).value();
  const std::vector<float> v5 = f.read_f32("v.5").value();
  EXPECT_EQ(c->v_row(5, 1, 300)[7], v5[(1 * 512 + 300) * 128 + 7]);
  const std::vector<float> q2 = f.read_f32("q.2").value();
  EXPECT_EQ(c->q[2], q2);
}

TEST(Cache, RealFileRewritesToIdenticalTensorBytes) {
  const std::string path = testing::shared_kvcache("test-code.safetensors");
  auto c = read_cache(path);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->n_tokens, 1024);
  EXPECT_EQ(c->n_query, 64);
  auto bytes = serialize_cache(c.value());
  ASSERT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  auto original = SafetensorsFile::open(path).value();
  auto rewritten = SafetensorsFile::parse(std::move(bytes).value()).value();
  ASSERT_EQ(rewritten.entries().size(), original.entries().size());
  for (const auto& e : original.entries()) {
    const SafetensorsEntry* r = rewritten.find(e.name);
    ASSERT_NE(r, nullptr) << e.name;
    EXPECT_EQ(r->dtype, e.dtype);
    EXPECT_EQ(r->shape, e.shape);
    ASSERT_EQ(r->size_bytes, e.size_bytes);
    EXPECT_EQ(std::memcmp(rewritten.data(*r), original.data(e), e.size_bytes), 0) << e.name;
  }
  for (const auto& [key, value] : original.metadata()) {
    if (key == "rope_theta") continue;  // "100000.0" is written back as "100000"
    EXPECT_EQ(rewritten.metadata().at(key), value) << key;
  }
  EXPECT_EQ(rewritten.metadata().at("rope_theta"), "100000");
}

TEST(Cache, RoundTripEveryDtypeAndRopeSetting) {
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    SCOPED_TRACE(dtype_name(dt));
    KVCache c = small_cache(dt, RopeStyle::kInterleaved);
    c.position_offset = 1000;
    c.shape.rope.theta = 500000.0;
    c.shape.rope.llama3_factor = 8.0;
    c.shape.rope.llama3_original_max_position = 8192.0;
    c.sync_metadata();
    const std::string path = testing::temp_dir() + "/c.safetensors";
    ASSERT_TRUE(write_cache(c, path).is_ok());
    auto back = read_cache(path);
    ASSERT_TRUE(back.is_ok()) << back.status().to_string();
    expect_caches_equal(c, back.value());
    EXPECT_EQ(back->metadata, c.metadata);
    EXPECT_EQ(back->shape.rope.llama3_high_freq_factor, 4.0);
    // The file holds exactly that dtype.
    auto f = SafetensorsFile::open(path).value();
    for (const auto& e : f.entries()) EXPECT_EQ(e.dtype, dtype_name(dt)) << e.name;
  }
}

TEST(Cache, RoundTripWithoutQueries) {
  KVCache c = small_cache(DType::kBF16);
  c.q.clear();
  c.n_query = 0;
  c.n_heads = 0;
  c.model_name.clear();
  c.sync_metadata();
  EXPECT_EQ(c.metadata.count("num_heads"), 0u);
  EXPECT_EQ(c.metadata.count("model"), 0u);
  auto bytes = serialize_cache(c).value();
  auto back = parse_cache(bytes.data(), bytes.size());
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  expect_caches_equal(c, back.value());
  EXPECT_TRUE(back->q.empty());
}

TEST(Cache, SyncMetadataFormat) {
  KVCache c = small_cache(DType::kBF16);
  c.shape.rope.theta = 100000.0;
  c.shape.rope.llama3_factor = 8;
  c.position_offset = 17;
  c.sync_metadata();
  EXPECT_EQ(c.metadata.at("num_layers"), "3");
  EXPECT_EQ(c.metadata.at("num_kv_heads"), "2");
  EXPECT_EQ(c.metadata.at("head_dim"), "8");
  EXPECT_EQ(c.metadata.at("num_heads"), "4");
  EXPECT_EQ(c.metadata.at("rope_theta"), "100000");
  EXPECT_EQ(c.metadata.at("rope_style"), "half");
  EXPECT_EQ(c.metadata.at("position_offset"), "17");
  EXPECT_EQ(c.metadata.at("tokens"), "5");
  EXPECT_EQ(c.metadata.at("model"), "tiny");
  EXPECT_EQ(c.metadata.at("rope_scaling"), "llama3:factor=8,low=1,high=4,orig=8192");
  // Non-integers keep every digit needed to read back the same double.
  c.shape.rope.theta = 10000.1;
  c.shape.rope.llama3_factor = 0;
  c.shape.rope.style = RopeStyle::kInterleaved;
  c.sync_metadata();
  EXPECT_EQ(c.metadata.at("rope_theta"), "10000.1");
  EXPECT_EQ(c.metadata.at("rope_style"), "interleaved");
  EXPECT_EQ(c.metadata.count("rope_scaling"), 0u);
}

TEST(Cache, WriteUsesTypedFieldsOverStaleMetadata) {
  // Cut the cache to 3 tokens without calling sync_metadata: the file must still agree with itself.
  KVCache c = small_cache(DType::kF32);
  for (auto* layers : {&c.k, &c.v})
    for (auto& layer : *layers) {
      std::vector<float> cut;
      for (int h = 0; h < 2; ++h) cut.insert(cut.end(), layer.begin() + h * 5 * 8, layer.begin() + h * 5 * 8 + 3 * 8);
      layer = cut;
    }
  c.n_tokens = 3;
  c.position_offset = 2;
  ASSERT_EQ(c.metadata.at("tokens"), "5");
  auto bytes = serialize_cache(c).value();
  auto back = parse_cache(bytes.data(), bytes.size()).value();
  EXPECT_EQ(back.n_tokens, 3);
  EXPECT_EQ(back.metadata.at("tokens"), "3");
  EXPECT_EQ(back.position_offset, 2);
}

// A cache from a formula (no random numbers), as make_safetensors_ref.py expects it:
// vals(n)[i] = fp32 ((7 i) mod 13 - 6) / 3; k.l = vals(12) + l, v.l = -vals(12) - l, q.l = 2 vals(16).
KVCache formula_cache() {
  auto vals = [](int n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[i] = float((i * 7) % 13 - 6) / 3.0f;
    return v;
  };
  KVCache c;
  c.shape.n_layers = 2;
  c.shape.n_kv_heads = 1;
  c.shape.head_dim = 4;
  c.shape.rope.theta = 10000.0;
  c.dtype = DType::kBF16;
  c.n_tokens = 3;
  c.position_offset = 5;
  c.n_heads = 2;
  c.n_query = 2;
  c.model_name = "kvtc-writer";
  for (int l = 0; l < 2; ++l) {
    std::vector<float> k = vals(12), v = vals(12), q = vals(16);
    for (auto& x : k) x += float(l);
    for (auto& x : v) x = -x - float(l);
    for (auto& x : q) x *= 2.0f;
    c.k.push_back(k);
    c.v.push_back(v);
    c.q.push_back(q);
  }
  c.sync_metadata();
  return c;
}

// Our cache writer's bytes are pinned to a file that Python's safetensors loaded and checked (see
// tests/data/make_safetensors_ref.py). KVTC_REGEN_TESTDATA=1 rewrites it after an intended change.
TEST(Cache, WriterMatchesFileCheckedByPython) {
  const std::string path = std::string(KVTC_SOURCE_DIR) + "/tests/data/safetensors_ref_kvtc_cache.safetensors";
  const KVCache c = formula_cache();
  if (std::getenv("KVTC_REGEN_TESTDATA")) {
    ASSERT_TRUE(write_cache(c, path).is_ok());
  }
  auto golden = read_file(path);
  ASSERT_TRUE(golden.is_ok()) << golden.status().to_string();
  EXPECT_EQ(golden.value(), serialize_cache(c).value());
}

// A cache file written by Python (safetensors.torch.save_file), with interleaved RoPE, llama3 scaling and
// a position offset, and tensors stored in the order torch chooses (k.0, k.1, q.0, ...).
TEST(Cache, ReadsCacheWrittenByPython) {
  auto c = read_cache(std::string(KVTC_SOURCE_DIR) + "/tests/data/safetensors_ref_torch_cache.safetensors");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  KVCache want = formula_cache();
  want.position_offset = 7;
  want.model_name = "py-ref";
  want.shape.rope.style = RopeStyle::kInterleaved;
  want.shape.rope.llama3_factor = 8;
  want.shape.rope.llama3_original_max_position = 8192;
  for (auto* layers : {&want.k, &want.v, &want.q})
    for (auto& layer : *layers)
      for (auto& x : layer) x = bf16_to_f32(f32_to_bf16(x));
  expect_caches_equal(c.value(), want);
}

TEST(Cache, ModelShapeEquality) {
  const ModelShape a = small_shape();
  ModelShape b = a;
  EXPECT_TRUE(a == b);
  b.rope.llama3_low_freq_factor = 2;  // irrelevant while scaling is off
  EXPECT_TRUE(a == b);
  b.rope.llama3_factor = 8;
  EXPECT_FALSE(a == b);
  for (auto edit : std::vector<std::function<void(ModelShape&)>>{
           [](ModelShape& s) { s.n_layers++; }, [](ModelShape& s) { s.n_kv_heads++; },
           [](ModelShape& s) { s.head_dim += 2; }, [](ModelShape& s) { s.rope.theta *= 2; },
           [](ModelShape& s) { s.rope.style = RopeStyle::kInterleaved; }}) {
    ModelShape c = a;
    edit(c);
    EXPECT_FALSE(a == c) << c.to_string();
  }
  ModelShape s = a;
  s.rope.llama3_factor = 8;
  s.rope.theta = 500000;
  EXPECT_EQ(s.to_string(), "3 layers x 2 kv heads x 8, rope half theta 500000, llama3 factor 8 low 1 high 4 orig 8192");
}

TEST(Cache, ValidateNamesTheFaultyTensor) {
  const KVCache good = small_cache(DType::kBF16);
  ASSERT_TRUE(good.validate().is_ok());
  auto check = [&](std::function<void(KVCache&)> edit, const std::string& needle) {
    KVCache c = good;
    edit(c);
    const Status st = c.validate();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
  };
  check([](KVCache& c) { c.k[2].pop_back(); }, "k.2");
  check([](KVCache& c) { c.v[1].push_back(0); }, "v.1");
  check([](KVCache& c) { c.q[0].resize(3); }, "q.0");
  check([](KVCache& c) { c.v.pop_back(); }, "layers");
  check([](KVCache& c) { c.q.pop_back(); }, "q");
  check([](KVCache& c) { c.n_tokens = 6; }, "k.0");
  check([](KVCache& c) { c.shape.n_layers = 0; }, "n_layers");
  check([](KVCache& c) { c.shape.n_kv_heads = -1; }, "n_kv_heads");
  check([](KVCache& c) { c.shape.head_dim = 7; }, "head_dim");
  check([](KVCache& c) { c.shape.rope.theta = std::nan(""); }, "theta");
  check([](KVCache& c) { c.shape.rope.llama3_factor = 0.5; }, "llama3");
  check([](KVCache& c) { c.position_offset = -1; }, "position_offset");
  check([](KVCache& c) { c.n_heads = 0; }, "n_heads");
  check([](KVCache& c) { c.n_query = 0; }, "n_query");
}

TEST(CacheHostile, MissingOrBadMetadata) {
  const RawCacheFile base(small_cache(DType::kBF16));
  ASSERT_TRUE(base.parse().is_ok());
  for (const char* key : {"num_layers", "num_kv_heads", "head_dim", "rope_theta", "rope_style", "position_offset"}) {
    RawCacheFile f = base;
    f.metadata.erase(key);
    const Status st = f.parse();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << key;
    EXPECT_NE(st.message().find(key), std::string::npos) << st.message();
  }
  const std::pair<const char*, const char*> bad[] = {
      {"num_layers", "3x"},  {"num_layers", ""},     {"num_layers", " 3"},   {"num_layers", "0"},
      {"num_layers", "-3"},  {"num_layers", "3.0"},  {"num_layers", "99999999999999999999"},
      {"num_kv_heads", "two"}, {"head_dim", "7"},    {"head_dim", "1e3"},    {"rope_theta", "abc"},
      {"rope_theta", "nan"}, {"rope_theta", "-5"},   {"rope_theta", "inf"},  {"rope_style", "neox"},
      {"position_offset", "-1"}, {"num_heads", "x"}, {"num_heads", "3"},  // q.* has 4 heads
      {"rope_scaling", "llama3:factor=8"},                                 // incomplete
      {"rope_scaling", "llama3:factor=8,low=1,high=4,orig=8192,extra=1"},
      {"rope_scaling", "llama3:factor=x,low=1,high=4,orig=8192"},
      {"rope_scaling", "llama3:factor=8,low=4,high=1,orig=8192"},          // low >= high
      {"rope_scaling", "llama3:factor=8,factor=8,low=1,high=4"},           // repeated key
      {"rope_scaling", "llama3:factor=8,low=1,high=4,orig=8192,"},
  };
  for (const auto& [key, value] : bad) {
    RawCacheFile f = base;
    f.metadata[key] = value;
    const Status st = f.parse();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << key << "=" << value << ": " << st.to_string();
  }
  RawCacheFile yarn = base;
  yarn.metadata["rope_scaling"] = "yarn:factor=4";
  EXPECT_EQ(yarn.parse().code(), StatusCode::kUnsupported);
  // model and num_heads are optional.
  RawCacheFile optional = base;
  optional.metadata.erase("model");
  optional.metadata.erase("num_heads");
  optional.metadata.erase("tokens");
  auto c = parse_cache(optional.bytes().data(), optional.bytes().size());
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->n_heads, 4);  // from the q tensors
  EXPECT_EQ(c->model_name, "");
}

TEST(CacheHostile, TensorRules) {
  const RawCacheFile base(small_cache(DType::kBF16));
  auto expect = [&](std::function<void(RawCacheFile&)> edit, StatusCode code, const std::string& needle) {
    RawCacheFile f = base;
    edit(f);
    const Status st = f.parse();
    EXPECT_EQ(st.code(), code) << needle << ": " << st.to_string();
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
  };
  expect([](RawCacheFile& f) { f.erase("v.1"); }, StatusCode::kInvalidArgument, "v.1");
  expect([](RawCacheFile& f) { f.erase("k.0"); }, StatusCode::kInvalidArgument, "k.0");
  expect([](RawCacheFile& f) { f.erase("q.2"); }, StatusCode::kInvalidArgument, "q.2");  // q in some layers only
  expect([](RawCacheFile& f) { f.erase("q.0"); }, StatusCode::kInvalidArgument, "q.0");
  expect([](RawCacheFile& f) { f.metadata["num_layers"] = "4"; }, StatusCode::kInvalidArgument, "k.3");
  expect([](RawCacheFile& f) { f.metadata["num_layers"] = "2"; }, StatusCode::kInvalidArgument, "k.2");  // extra layer
  expect([](RawCacheFile& f) { f.metadata["num_kv_heads"] = "1"; }, StatusCode::kInvalidArgument, "k.0");
  expect([](RawCacheFile& f) { f.metadata["head_dim"] = "4"; }, StatusCode::kInvalidArgument, "k.0");
  expect(
      [](RawCacheFile& f) {  // v.2 with 4 tokens instead of 5
        auto* t = f.find("v.2");
        t->shape[1] = 4;
        t->bytes.resize(2 * 4 * 8 * 2);
      },
      StatusCode::kInvalidArgument, "v.2");
  expect(
      [](RawCacheFile& f) {  // q.1 with another n_query
        auto* t = f.find("q.1");
        t->shape[1] = 1;
        t->bytes.resize(4 * 1 * 8 * 2);
      },
      StatusCode::kInvalidArgument, "q.1");
  expect(
      [](RawCacheFile& f) {  // 2-D key tensor
        auto* t = f.find("k.0");
        t->shape = {10, 8};
      },
      StatusCode::kInvalidArgument, "k.0");
  expect([](RawCacheFile& f) { f.tensors.push_back({"extra", "F32", {1}, {0, 0, 0, 0}}); },
         StatusCode::kInvalidArgument, "extra");
  expect([](RawCacheFile& f) { f.tensors.push_back({"k.01", "BF16", {1}, {0, 0}}); },
         StatusCode::kInvalidArgument, "k.01");
  expect([](RawCacheFile& f) { f.find("k.1")->dtype = "I16"; }, StatusCode::kUnsupported, "k.1");
  expect(
      [](RawCacheFile& f) {  // all layers I32: still unsupported, named at k.0
        for (auto& t : f.tensors) {
          t.dtype = "I32";
          t.bytes.resize(t.bytes.size() * 2);
        }
      },
      StatusCode::kUnsupported, "k.0");
  expect([](RawCacheFile& f) { f.find("v.0")->dtype = "F16"; }, StatusCode::kInvalidArgument, "v.0");  // mixed
}

TEST(CacheHostile, TruncatedRealFileNeverCrashes) {
  auto bytes = read_file(testing::shared_kvcache("small-test.safetensors"));
  ASSERT_TRUE(bytes.is_ok());
  for (size_t n : {size_t(0), size_t(7), size_t(8), size_t(100), size_t(2295), size_t(2296), size_t(3000),
                   bytes->size() / 2, bytes->size() - 1}) {
    std::vector<uint8_t> prefix(bytes->begin(), bytes->begin() + long(n));
    auto c = parse_cache(prefix.data(), prefix.size());
    EXPECT_EQ(c.status().code(), StatusCode::kCorrupt) << n;
  }
}

TEST(CacheWrite, MissingDirectoryLeavesNothing) {
  const std::string dir = testing::temp_dir();
  const std::string path = dir + "/no/such/dir/c.safetensors";
  const Status st = write_cache(small_cache(DType::kBF16), path);
  EXPECT_EQ(st.code(), StatusCode::kIo);
  EXPECT_FALSE(fs::exists(dir + "/no"));
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(CacheWrite, FailureKeepsTheOldFileWhole) {
  const std::string dir = testing::temp_dir();
  const std::string path = dir + "/c.safetensors";
  const KVCache good = small_cache(DType::kBF16);
  ASSERT_TRUE(write_cache(good, path).is_ok());
  const auto before = read_file(path).value();
  // Invalid cache: refused before anything is written.
  KVCache bad = good;
  bad.k[1].pop_back();
  EXPECT_EQ(write_cache(bad, path).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(read_file(path).value(), before);
  // A target that cannot be replaced (a non-empty directory of that name): the temporary is removed.
  const std::string blocked = dir + "/blocked";
  fs::create_directories(blocked + "/inside");
  EXPECT_FALSE(write_cache(good, blocked).is_ok());
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"blocked", "c.safetensors"})) << "no temporary left behind";
  // And a successful overwrite leaves just the new file.
  KVCache other = good;
  other.position_offset = 9;
  ASSERT_TRUE(write_cache(other, path).is_ok());
  EXPECT_EQ(read_cache(path)->position_offset, 9);
}

}  // namespace
}  // namespace kvtc
