// The engine's forward pass against Hugging Face transformers 5.17 (fp32, eager attention, CPU) on
// the same weights and tokens: tests/data/engine_logits_ref.safetensors and engine_cache_ref.safetensors,
// made by tests/data/make_engine_ref.py. Tolerances (logits of kvtc-ref-26m span about +-25; the engine
// measured 2.5e-5 at worst, so the bounds leave room for other BLAS kernels and CPUs):
//   logits        max |engine - transformers| <= kLogitTol at every stored position
//   argmax        equal, unless transformers' top two are within kLogitTol (a tie in fp32)
//   greedy        identical continuations (transformers' generate with its KV cache)
//   cache         k, v, q within kCacheTol * max|x| of the tensor
// For scale: transformers itself on the GPU (fp32, TF32 off) differs from its CPU run by up to 2.8e-5.
// Then the engine against itself: chunked prefill == one-shot, decode step == prefill of one more
// token, export -> import round trip, eviction bookkeeping; and a small random Qwen2-style model
// (biases, GQA, sliding window, interleaved RoPE) against a plain loop implementation.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <nlohmann/json.hpp>

#include "engine/cache_io.hpp"
#include "engine/generate.hpp"
#include "engine/model.hpp"
#include "engine/token_stream.hpp"
#include "engine/tokenizer.hpp"
#include "format/safetensors.hpp"
#include "test_util.hpp"
#include "util/file_io.hpp"

namespace kvtc::engine {
namespace {

using nlohmann::json;

constexpr float kLogitTol = 5e-4f;
constexpr float kCacheTol = 1e-4f;

std::string model_dir() { return kvtc::testing::shared_dir() + "/models/kvtc-ref-26m"; }
std::string test_data(const std::string& name) { return std::string(KVTC_SOURCE_DIR) + "/tests/data/" + name; }

template <typename T>
std::vector<T> read_raw(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  if (e == nullptr) return {};
  std::vector<T> out(size_t(e->size_bytes / sizeof(T)));
  std::memcpy(out.data(), f.data(*e), e->size_bytes);
  return out;
}

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name) {
  auto r = f.read_f32(name);
  EXPECT_TRUE(r.is_ok()) << name << ": " << r.status().to_string();
  return r.is_ok() ? std::move(r).value() : std::vector<float>();
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class RefModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(model_dir() + "/config.json")) return;
    auto m = Model::load(model_dir());
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    model_ = new Model(std::move(m).value());
    auto t = Tokenizer::load_for_model(model_dir());
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tok_ = new Tokenizer(std::move(t).value());
    auto f = SafetensorsFile::open(test_data("engine_logits_ref.safetensors"));
    ASSERT_TRUE(f.is_ok()) << f.status().to_string();
    ref_ = new SafetensorsFile(std::move(f).value());
    auto bytes = read_file(test_data("engine_ref_meta.json"));
    ASSERT_TRUE(bytes.is_ok());
    meta_ = new json(json::parse(bytes->begin(), bytes->end()));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
    delete ref_;
    delete meta_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "reference model not found at " << model_dir();
  }
  static const json& prompt(const std::string& name) {
    for (const auto& p : (*meta_)["prompts"])
      if (p["name"] == name) return p;
    static const json kNone;
    return kNone;
  }
  static std::vector<int32_t> ids(const std::string& name) { return read_raw<int32_t>(*ref_, name + ".ids"); }

  // Runs the prompt in one forward call and checks every stored quantity against transformers.
  void check_prompt(const json& p) {
    const std::string name = p["name"];
    SCOPED_TRACE(name);
    const std::vector<int32_t> want_ids = ids(name);
    // The text through the engine's tokenizer gives transformers' ids (with the post-processor's bos).
    auto got_ids = tok_->encode(p["text"].get<std::string>(), true);
    ASSERT_TRUE(got_ids.is_ok());
    ASSERT_EQ(*got_ids, want_ids);
    const int64_t T = int64_t(want_ids.size()), V = model_->config().vocab_size;

    KvState st = model_->new_state();
    std::vector<float> logits;
    ForwardOptions fo;
    fo.n_logits = -1;
    ASSERT_TRUE(model_->forward(&st, want_ids.data(), T, fo, &logits).is_ok());
    ASSERT_EQ(int64_t(logits.size()), T * V);

    // Full logits of the last positions.
    const std::vector<float> full = read_f32(*ref_, name + ".logits");
    const int64_t n_full = int64_t(full.size()) / V;
    const float d_full = max_abs_diff(full.data(), logits.data() + (T - n_full) * V, size_t(n_full * V));
    EXPECT_LE(d_full, kLogitTol);

    // Top-5 logits and logsumexp at every position; argmax agreement.
    const auto top_ids = read_raw<int16_t>(*ref_, name + ".top5_ids");
    const std::vector<float> top_val = read_f32(*ref_, name + ".top5_logits");
    const std::vector<float> lse = read_f32(*ref_, name + ".lse");
    float d_top = 0, d_lse = 0;
    int argmax_diff = 0, real_argmax_diff = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* row = logits.data() + t * V;
      for (int k = 0; k < 5; ++k) d_top = std::max(d_top, std::fabs(row[top_ids[t * 5 + k]] - top_val[t * 5 + k]));
      double m = row[0], s = 0;
      for (int64_t v = 1; v < V; ++v) m = std::max(m, double(row[v]));
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
      d_lse = std::max(d_lse, float(std::fabs(m + std::log(s) - lse[t])));
      if (argmax(row, V) != top_ids[t * 5]) {
        ++argmax_diff;
        if (top_val[t * 5] - top_val[t * 5 + 1] > kLogitTol) ++real_argmax_diff;
      }
    }
    EXPECT_LE(d_top, kLogitTol);
    EXPECT_LE(d_lse, kLogitTol);
    EXPECT_EQ(real_argmax_diff, 0);
    std::printf("[ engine ] %-12s T=%5lld  max|dlogit| last=%.2e all-top5=%.2e  max|dlse|=%.2e  argmax differs at %d (ties)\n",
                name.c_str(), static_cast<long long>(T), d_full, d_top, d_lse, argmax_diff);

    // Greedy continuation, through the decode path, equals transformers' generate().
    if (ref_->find(name + ".greedy") != nullptr) {
      const auto want = read_raw<int32_t>(*ref_, name + ".greedy");
      KvState g = model_->new_state();
      GenerateOptions go;
      go.max_new_tokens = int64_t(want.size());
      auto out = generate(*model_, &g, want_ids, go);
      ASSERT_TRUE(out.is_ok());
      EXPECT_EQ(*out, want) << "engine: " << tok_->decode(*out) << "\nHF:     " << tok_->decode(want);
    }
  }

  static Model* model_;
  static Tokenizer* tok_;
  static SafetensorsFile* ref_;
  static json* meta_;
};
Model* RefModel::model_ = nullptr;
Tokenizer* RefModel::tok_ = nullptr;
SafetensorsFile* RefModel::ref_ = nullptr;
json* RefModel::meta_ = nullptr;

TEST_F(RefModel, ConfigMatchesModelCard) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.n_layers, 8);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 1408);
  EXPECT_EQ(c.vocab_size, 4096);
  EXPECT_DOUBLE_EQ(c.rope.theta, 100000.0);  // from "rope_parameters"
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>({1}));
}

TEST_F(RefModel, LogitsMatchTransformersShortPrompts) {
  for (const char* name : {"prose", "code_c", "code_go", "unicode"}) check_prompt(prompt(name));
}

TEST_F(RefModel, LogitsMatchTransformersRetrievalPrompts) {
  check_prompt(prompt("passkey_1k"));
  check_prompt(prompt("multikey_50"));
  // The retrieval answers themselves (the model card's 20/20 and 40/40 rows).
  const std::string passkey = tok_->decode(read_raw<int32_t>(*ref_, "passkey_1k.greedy"));
  const std::string multikey = tok_->decode(read_raw<int32_t>(*ref_, "multikey_50.greedy"));
  EXPECT_EQ(passkey.find((*meta_)["passkey_key"].get<std::string>()), 1u) << passkey;
  EXPECT_EQ(multikey.find((*meta_)["multikey_answer"].get<std::string>()), 1u) << multikey;
}

TEST_F(RefModel, LogitsMatchTransformersAt4KTokens) {
  // The full 4,096-token context: RoPE at the largest positions, attention over 4K keys.
  const auto t0 = std::chrono::steady_clock::now();
  check_prompt(prompt("long_4k"));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ engine ] 4096-token prefill with all logits and checks: %.2f s\n", s);
}

TEST_F(RefModel, ChunkedPrefillEqualsOneShot) {
  const std::vector<int32_t> tokens = ids("passkey_1k");
  const int64_t T = int64_t(tokens.size()), V = model_->config().vocab_size;
  KvState one = model_->new_state();
  std::vector<float> want;
  ForwardOptions fo;
  fo.n_logits = -1;
  ASSERT_TRUE(model_->forward(&one, tokens.data(), T, fo, &want).is_ok());
  for (int64_t chunk : {1 + T / 3, int64_t(97), int64_t(1000)}) {
    KvState st = model_->new_state();
    std::vector<float> got, part;
    for (int64_t c0 = 0; c0 < T; c0 += chunk) {
      const int64_t n = std::min(chunk, T - c0);
      ASSERT_TRUE(model_->forward(&st, tokens.data() + c0, n, fo, &part).is_ok());
      got.insert(got.end(), part.begin(), part.end());
    }
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LE(max_abs_diff(got.data(), want.data(), got.size()), 1e-4f) << "chunk " << chunk;
    EXPECT_EQ(st.n_tokens(), T);
    EXPECT_EQ(st.next_position(), T);
    float dk = 0;
    for (int l = 0; l < model_->config().n_layers; ++l)
      for (int h = 0; h < model_->config().n_kv_heads; ++h)
        dk = std::max(dk, max_abs_diff(st.k(l, h), one.k(l, h), size_t(T) * 128));
    EXPECT_LE(dk, 1e-4f);
  }
  // Internal chunking and query blocking of one call give the same result as the defaults.
  ForwardOptions small = fo;
  small.chunk_tokens = 100;
  small.attention_block = 7;
  KvState st = model_->new_state();
  std::vector<float> got;
  ASSERT_TRUE(model_->forward(&st, tokens.data(), T, small, &got).is_ok());
  EXPECT_LE(max_abs_diff(got.data(), want.data(), got.size()), 1e-4f);
  (void)V;
}

TEST_F(RefModel, DecodeStepEqualsPrefillOfOneMoreToken) {
  const std::vector<int32_t> tokens = ids("multikey_50");
  const int64_t T = int64_t(tokens.size()), V = model_->config().vocab_size;
  KvState full = model_->new_state();
  std::vector<float> want;
  ASSERT_TRUE(model_->forward(&full, tokens, &want, 3).is_ok());
  KvState st = model_->new_state();
  ASSERT_TRUE(model_->forward(&st, tokens.data(), T - 3, {}, nullptr).is_ok());
  for (int i = 0; i < 3; ++i) {
    std::vector<float> step;
    ASSERT_TRUE(model_->forward(&st, tokens.data() + T - 3 + i, 1, {}, &step).is_ok());
    ASSERT_EQ(int64_t(step.size()), V);
    EXPECT_LE(max_abs_diff(step.data(), want.data() + i * V, size_t(V)), 1e-4f) << "step " << i;
    EXPECT_EQ(st.last_logits(), step);
  }
}

TEST_F(RefModel, CacheExportMatchesTransformersCache) {
  auto f = SafetensorsFile::open(test_data("engine_cache_ref.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  const auto& md = f->metadata();
  const std::vector<int32_t> tokens = json::parse(md.at("ids")).get<std::vector<int32_t>>();
  auto enc = tok_->encode(md.at("text"), true);
  ASSERT_TRUE(enc.is_ok());
  EXPECT_EQ(*enc, tokens);
  KvState st = model_->new_state();
  st.set_query_capture(4);
  ASSERT_TRUE(model_->forward(&st, tokens).is_ok());
  ExportOptions eo;
  eo.n_query = 4;
  auto cache = export_cache(model_->config(), st, eo);
  ASSERT_TRUE(cache.is_ok()) << cache.status().to_string();
  ASSERT_TRUE(cache->validate().is_ok()) << cache->validate().to_string();
  EXPECT_EQ(cache->n_tokens, int64_t(tokens.size()));
  EXPECT_EQ(cache->metadata.at("rope_style"), "half");
  EXPECT_EQ(cache->metadata.at("num_heads"), "4");
  for (int l = 0; l < 8; ++l) {
    for (const char* kind : {"k", "v", "q"}) {
      const std::string name = std::string(kind) + "." + std::to_string(l);
      const std::vector<float> want = read_f32(*f, name);
      const std::vector<float>& got = kind[0] == 'k' ? cache->k[l] : kind[0] == 'v' ? cache->v[l] : cache->q[l];
      ASSERT_EQ(got.size(), want.size()) << name;
      float scale = 0;
      for (float x : want) scale = std::max(scale, std::fabs(x));
      EXPECT_LE(max_abs_diff(got.data(), want.data(), got.size()), kCacheTol * scale) << name;
    }
  }
}

TEST_F(RefModel, DumpReproducesSharedCacheFiles) {
  // shared/kvcache/test-code.safetensors was made by transformers (fp32 on the GPU, stored as bf16)
  // from code.test, documents 10.. as <bos> doc <eos>, 1,024 tokens, q for the last 64 positions. The
  // engine's stream, forward and export give the same bf16 values, but for the elements whose fp32
  // value lies next to a bf16 rounding boundary (one bf16 step apart).
  const std::string ref_path = kvtc::testing::shared_kvcache("test-code.safetensors");
  const std::string text = kvtc::testing::shared_dir() + "/corpus/code.test.txt.xz";
  if (!std::filesystem::exists(ref_path) || !std::filesystem::exists(text)) GTEST_SKIP() << "shared caches not found";
  auto ref = read_cache(ref_path);
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  TokenStream stream(*tok_, {text}, 1, /*skip_docs=*/10);
  auto tokens = stream.next(1024);
  ASSERT_TRUE(tokens.is_ok());
  ASSERT_EQ(tokens->size(), 1024u);
  KvState st = model_->new_state();
  st.set_query_capture(64);
  ASSERT_TRUE(model_->forward(&st, *tokens).is_ok());
  ExportOptions eo;
  eo.dtype = DType::kBF16;
  eo.n_query = 64;
  auto got = export_cache(model_->config(), st, eo);
  ASSERT_TRUE(got.is_ok());
  ASSERT_TRUE(got->shape == ref->shape);
  ASSERT_EQ(got->n_query, ref->n_query);
  // A differing element must be within one bf16 step of its value, or (values next to zero, where
  // fp32 cancellation decides the low bits) within 1e-4 of the tensor's largest magnitude.
  int64_t n = 0, same = 0, outside = 0;
  double worst_step = 0;
  for (int l = 0; l < 8; ++l)
    for (int kind = 0; kind < 3; ++kind) {
      const auto& a = kind == 0 ? got->k[l] : kind == 1 ? got->v[l] : got->q[l];
      const auto& b = kind == 0 ? ref->k[l] : kind == 1 ? ref->v[l] : ref->q[l];
      ASSERT_EQ(a.size(), b.size());
      float scale = 0;
      for (float x : b) scale = std::max(scale, std::fabs(x));
      for (size_t i = 0; i < a.size(); ++i) {
        ++n;
        if (a[i] == b[i]) {
          ++same;
          continue;
        }
        const double d = std::fabs(double(a[i]) - double(b[i]));
        const double step = std::ldexp(1.0, std::ilogb(std::max(std::fabs(a[i]), std::fabs(b[i]))) - 7);
        if (d > step && d > 1e-4 * scale) ++outside;
        if (d > 1e-4 * scale) worst_step = std::max(worst_step, d / step);
      }
    }
  std::printf("[ engine ] test-code.safetensors: %.4f%% of %lld bf16 values identical, the rest within %.0f bf16 step\n",
              100.0 * double(same) / double(n), static_cast<long long>(n), worst_step);
  EXPECT_GE(double(same) / double(n), 0.99);
  EXPECT_EQ(outside, 0);
}

TEST_F(RefModel, ExportImportRoundTripContinuesIdentically) {
  const std::vector<int32_t> tokens = ids("code_go");
  const int64_t T = int64_t(tokens.size());
  KvState a = model_->new_state();
  ASSERT_TRUE(model_->forward(&a, tokens.data(), T - 1, {}, nullptr).is_ok());
  auto cache = export_cache(model_->config(), a);
  ASSERT_TRUE(cache.is_ok());
  // Through the file layout too.
  auto bytes = serialize_cache(*cache);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  auto back = parse_cache(bytes->data(), bytes->size());
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  KvState b = model_->new_state();
  ASSERT_TRUE(import_cache(model_->config(), *back, &b).is_ok());
  EXPECT_EQ(b.n_tokens(), T - 1);
  EXPECT_EQ(b.next_position(), T - 1);
  std::vector<float> la, lb;
  ASSERT_TRUE(model_->forward(&a, &tokens[T - 1], 1, {}, &la).is_ok());
  ASSERT_TRUE(model_->forward(&b, &tokens[T - 1], 1, {}, &lb).is_ok());
  EXPECT_EQ(la, lb);  // f32 export and import are exact
  // bf16 export rounds, as a bf16 file would.
  ExportOptions eo;
  eo.dtype = DType::kBF16;
  auto c16 = export_cache(model_->config(), a, eo);
  ASSERT_TRUE(c16.is_ok());
  EXPECT_NE(c16->k[0], cache->k[0]);
  // A cache of another shape is refused.
  KVCache other = *cache;
  other.shape.rope.theta = 10000;
  EXPECT_EQ(import_cache(model_->config(), other, &b).code(), StatusCode::kMismatch);
}

TEST_F(RefModel, EvictionKeepsPositions) {
  const std::vector<int32_t> tokens = ids("prose");
  const int64_t T = int64_t(tokens.size());
  KvState a = model_->new_state();
  a.set_accumulate_attention(true);
  ASSERT_TRUE(model_->forward(&a, tokens.data(), T - 1, {}, nullptr).is_ok());
  // Every query's attention sums to one, over n_rep query heads per KV head.
  double mass = 0;
  for (int64_t j = 0; j < a.n_tokens(); ++j) mass += a.attention_mass(0)[j];
  EXPECT_NEAR(mass, 2.0 * (T - 1), 1e-2);
  // Keeping every token changes nothing; dropping some keeps the later positions.
  std::vector<int64_t> all(size_t(T - 1));
  for (int64_t i = 0; i < T - 1; ++i) all[i] = i;
  KvState b = model_->new_state();
  ASSERT_TRUE(model_->forward(&b, tokens.data(), T - 1, {}, nullptr).is_ok());
  ASSERT_TRUE(b.retain(all).is_ok());
  std::vector<float> la, lb;
  ASSERT_TRUE(model_->forward(&a, &tokens[T - 1], 1, {}, &la).is_ok());
  ASSERT_TRUE(model_->forward(&b, &tokens[T - 1], 1, {}, &lb).is_ok());
  EXPECT_LE(max_abs_diff(la.data(), lb.data(), la.size()), 1e-5f);
  KvState c = model_->new_state();
  ASSERT_TRUE(model_->forward(&c, tokens.data(), T - 1, {}, nullptr).is_ok());
  std::vector<int64_t> keep = {0, 1, 2, 3};
  for (int64_t i = T - 9; i < T - 1; ++i) keep.push_back(i);
  ASSERT_TRUE(c.retain(keep).is_ok());
  EXPECT_EQ(c.n_tokens(), 12);
  EXPECT_EQ(c.positions()[4], T - 9);
  EXPECT_EQ(c.next_position(), T - 1);
  EXPECT_FALSE(export_cache(model_->config(), c).is_ok());  // gaps cannot be written
  EXPECT_FALSE(c.retain({3, 2}).is_ok());
}

TEST_F(RefModel, SamplingIsSeededAndTopKOneIsGreedy) {
  const std::vector<int32_t> prompt_ids = ids("code_c");
  auto run = [&](SamplingOptions so, int64_t n) {
    KvState st = model_->new_state();
    GenerateOptions go;
    go.max_new_tokens = n;
    go.sampling = so;
    auto out = generate(*model_, &st, prompt_ids, go);
    EXPECT_TRUE(out.is_ok());
    return *out;
  };
  SamplingOptions hot;
  hot.temperature = 1.0;
  hot.seed = 42;
  EXPECT_EQ(run(hot, 12), run(hot, 12));
  SamplingOptions top1 = hot;
  top1.top_k = 1;
  EXPECT_EQ(run(top1, 12), run(SamplingOptions{}, 12));
  const std::vector<int32_t> greedy = read_raw<int32_t>(*ref_, "code_c.greedy");
  EXPECT_EQ(run(top1, 8), std::vector<int32_t>(greedy.begin(), greedy.begin() + 8));
  // Stop tokens end generation.
  KvState st = model_->new_state();
  GenerateOptions go;
  go.max_new_tokens = 20;
  go.stop_tokens = {greedy[2]};
  auto out = generate(*model_, &st, prompt_ids, go);
  ASSERT_TRUE(out.is_ok());
  EXPECT_EQ(out->size(), 3u);
}

TEST_F(RefModel, RejectsBadInput) {
  KvState st = model_->new_state();
  const std::vector<int32_t> bad = {0, 4096};
  EXPECT_EQ(model_->forward(&st, bad).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.n_tokens(), 0);
  EXPECT_FALSE(Model::load("/nonexistent-model-dir").is_ok());
}

// ---------------------------------------------------------------------------------------------------
// Without the reference model: configs, and a tiny random model against a plain implementation.
// ---------------------------------------------------------------------------------------------------

TEST(ModelConfig, ParsesLlama3Qwen2AndMistralFields) {
  auto llama3 = ModelConfig::parse(R"({"model_type":"llama","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rope_theta":500000.0,
      "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
      "original_max_position_embeddings":8192},"eos_token_id":[5,6]})", "m");
  ASSERT_TRUE(llama3.is_ok()) << llama3.status().to_string();
  EXPECT_EQ(llama3->head_dim, 16);
  EXPECT_DOUBLE_EQ(llama3->rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(llama3->rope.llama3_factor, 8.0);
  EXPECT_EQ(llama3->eos_token_ids, std::vector<int32_t>({5, 6}));
  // inv_freq: high frequencies unchanged, low ones divided by the factor, smooth in between.
  const std::vector<float> inv = llama3->rope_inv_freq();
  ASSERT_EQ(inv.size(), 8u);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  const double base7 = std::pow(500000.0, -14.0 / 16.0);  // wavelength 2 pi / base7 > 8192: scaled
  EXPECT_NEAR(inv[7], base7 / 8.0, 1e-6 * base7);

  auto qwen = ModelConfig::parse(R"({"model_type":"qwen2","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"vocab_size":100,
      "rope_theta":1000000.0,"tie_word_embeddings":true,"use_sliding_window":false,"sliding_window":32})", "q");
  ASSERT_TRUE(qwen.is_ok());
  EXPECT_TRUE(qwen->qkv_bias);
  EXPECT_FALSE(qwen->o_bias);
  EXPECT_EQ(qwen->sliding_window, 0);
  EXPECT_EQ(qwen->n_rep(), 4);

  auto mistral = ModelConfig::parse(R"({"model_type":"mistral","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"sliding_window":4096})", "x");
  ASSERT_TRUE(mistral.is_ok());
  EXPECT_EQ(mistral->sliding_window, 4096);

  EXPECT_EQ(ModelConfig::parse(R"({"model_type":"gpt2"})", "x").status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(ModelConfig::parse(R"({"model_type":"llama","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":3,"num_key_value_heads":2,"vocab_size":100})", "x").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ModelConfig::parse(R"({"model_type":"llama","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"rope_scaling":{"rope_type":"yarn","factor":4}})",
                               "x").status().code(),
            StatusCode::kUnsupported);
}

// A tiny model written to a temp folder (single model.safetensors) with random fp32 weights.
struct TinyModel {
  std::string dir;
  std::map<std::string, std::vector<float>> w;
  int D = 32, I = 48, L = 2, H = 4, KV = 2, hd = 8, V = 50;
};

TinyModel make_tiny(const std::string& config_extra, bool biases, bool tied, uint64_t seed) {
  TinyModel m;
  m.dir = kvtc::testing::temp_dir();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean = 0.0f) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = mean + nd(rng);
    m.w[name] = v;
    return shape;
  };
  std::map<std::string, std::vector<int64_t>> shapes;
  shapes["model.embed_tokens.weight"] = add("model.embed_tokens.weight", {m.V, m.D});
  shapes["model.norm.weight"] = add("model.norm.weight", {m.D}, 1.0f);
  if (!tied) shapes["lm_head.weight"] = add("lm_head.weight", {m.V, m.D});
  for (int l = 0; l < m.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes[p + "input_layernorm.weight"] = add(p + "input_layernorm.weight", {m.D}, 1.0f);
    shapes[p + "post_attention_layernorm.weight"] = add(p + "post_attention_layernorm.weight", {m.D}, 1.0f);
    shapes[p + "self_attn.q_proj.weight"] = add(p + "self_attn.q_proj.weight", {m.H * m.hd, m.D});
    shapes[p + "self_attn.k_proj.weight"] = add(p + "self_attn.k_proj.weight", {m.KV * m.hd, m.D});
    shapes[p + "self_attn.v_proj.weight"] = add(p + "self_attn.v_proj.weight", {m.KV * m.hd, m.D});
    shapes[p + "self_attn.o_proj.weight"] = add(p + "self_attn.o_proj.weight", {m.D, m.H * m.hd});
    if (biases) {
      shapes[p + "self_attn.q_proj.bias"] = add(p + "self_attn.q_proj.bias", {m.H * m.hd});
      shapes[p + "self_attn.k_proj.bias"] = add(p + "self_attn.k_proj.bias", {m.KV * m.hd});
      shapes[p + "self_attn.v_proj.bias"] = add(p + "self_attn.v_proj.bias", {m.KV * m.hd});
    }
    shapes[p + "mlp.gate_proj.weight"] = add(p + "mlp.gate_proj.weight", {m.I, m.D});
    shapes[p + "mlp.up_proj.weight"] = add(p + "mlp.up_proj.weight", {m.I, m.D});
    shapes[p + "mlp.down_proj.weight"] = add(p + "mlp.down_proj.weight", {m.D, m.I});
  }
  std::vector<SafetensorsTensorF32> tensors;
  for (auto& [name, v] : m.w) tensors.push_back({name, DType::kF32, shapes[name], v.data()});
  auto bytes = serialize_safetensors(tensors, {});
  EXPECT_TRUE(bytes.is_ok());
  EXPECT_TRUE(write_file_atomic(m.dir + "/model.safetensors", *bytes).is_ok());
  const std::string config = R"({"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
      "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"vocab_size":50,"rms_norm_eps":1e-6,
      "rope_theta":1000.0,"tie_word_embeddings":)" + std::string(tied ? "true" : "false") + "," + config_extra + "}";
  EXPECT_TRUE(write_file_atomic(m.dir + "/config.json", reinterpret_cast<const uint8_t*>(config.data()), config.size())
                  .is_ok());
  return m;
}

// The plain loops of the Hugging Face modelling code, in double precision: logits of every position.
std::vector<double> reference_forward(const TinyModel& m, const std::vector<int32_t>& tokens, bool biases, bool tied,
                                      int64_t window, bool interleaved) {
  const int T = int(tokens.size());
  auto W = [&](const std::string& n) -> const std::vector<float>& { return m.w.at(n); };
  std::vector<std::vector<double>> x(T, std::vector<double>(m.D));
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < m.D; ++i) x[t][i] = W("model.embed_tokens.weight")[tokens[t] * m.D + i];
  auto norm = [&](const std::vector<double>& v, const std::vector<float>& w) {
    double ss = 0;
    for (double a : v) ss += a * a;
    const double r = 1.0 / std::sqrt(ss / v.size() + 1e-6);
    std::vector<double> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = w[i] * v[i] * r;
    return o;
  };
  auto linear = [&](const std::vector<double>& v, const std::vector<float>& w, int n_out, const std::vector<float>* b) {
    std::vector<double> o(n_out, 0.0);
    for (int r = 0; r < n_out; ++r) {
      for (size_t i = 0; i < v.size(); ++i) o[r] += w[r * v.size() + i] * v[i];
      if (b) o[r] += (*b)[r];
    }
    return o;
  };
  auto rope = [&](std::vector<double>& v, int head, int pos) {
    const int half = m.hd / 2;
    for (int i = 0; i < half; ++i) {
      const double f = std::pow(1000.0, -2.0 * i / m.hd) * pos;
      const int a = interleaved ? head * m.hd + 2 * i : head * m.hd + i;
      const int b = interleaved ? a + 1 : a + half;
      const double xa = v[a], xb = v[b];
      v[a] = xa * std::cos(f) - xb * std::sin(f);
      v[b] = xb * std::cos(f) + xa * std::sin(f);
    }
  };
  for (int l = 0; l < m.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (int t = 0; t < T; ++t) {
      auto h = norm(x[t], W(p + "input_layernorm.weight"));
      q[t] = linear(h, W(p + "self_attn.q_proj.weight"), m.H * m.hd, biases ? &W(p + "self_attn.q_proj.bias") : nullptr);
      k[t] = linear(h, W(p + "self_attn.k_proj.weight"), m.KV * m.hd, biases ? &W(p + "self_attn.k_proj.bias") : nullptr);
      v[t] = linear(h, W(p + "self_attn.v_proj.weight"), m.KV * m.hd, biases ? &W(p + "self_attn.v_proj.bias") : nullptr);
      for (int hh = 0; hh < m.H; ++hh) rope(q[t], hh, t);
      for (int g = 0; g < m.KV; ++g) rope(k[t], g, t);
    }
    for (int t = 0; t < T; ++t) {
      std::vector<double> o(m.H * m.hd, 0.0);
      for (int hh = 0; hh < m.H; ++hh) {
        const int g = hh / (m.H / m.KV);
        std::vector<double> s(t + 1, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          if (window > 0 && t - j >= window) continue;
          double d = 0;
          for (int i = 0; i < m.hd; ++i) d += q[t][hh * m.hd + i] * k[j][g * m.hd + i];
          s[j] = d / std::sqrt(double(m.hd));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (int j = 0; j <= t; ++j) z += s[j] == -INFINITY ? 0 : std::exp(s[j] - mx);
        for (int j = 0; j <= t; ++j) {
          if (s[j] == -INFINITY) continue;
          const double a = std::exp(s[j] - mx) / z;
          for (int i = 0; i < m.hd; ++i) o[hh * m.hd + i] += a * v[j][g * m.hd + i];
        }
      }
      auto ao = linear(o, W(p + "self_attn.o_proj.weight"), m.D, nullptr);
      for (int i = 0; i < m.D; ++i) x[t][i] += ao[i];
      auto h = norm(x[t], W(p + "post_attention_layernorm.weight"));
      auto g = linear(h, W(p + "mlp.gate_proj.weight"), m.I, nullptr);
      auto u = linear(h, W(p + "mlp.up_proj.weight"), m.I, nullptr);
      for (int i = 0; i < m.I; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      auto d = linear(g, W(p + "mlp.down_proj.weight"), m.D, nullptr);
      for (int i = 0; i < m.D; ++i) x[t][i] += d[i];
    }
  }
  std::vector<double> logits;
  for (int t = 0; t < T; ++t) {
    auto h = norm(x[t], W("model.norm.weight"));
    auto lg = linear(h, W(tied ? "model.embed_tokens.weight" : "lm_head.weight"), m.V, nullptr);
    logits.insert(logits.end(), lg.begin(), lg.end());
  }
  return logits;
}

void check_tiny(const std::string& config_extra, bool biases, bool tied, int64_t window, bool interleaved) {
  SCOPED_TRACE(config_extra);
  TinyModel m = make_tiny(config_extra, biases, tied, 7);
  LoadOptions lo;
  lo.interleaved_rope = interleaved;
  auto model = Model::load(m.dir, lo);
  ASSERT_TRUE(model.is_ok()) << model.status().to_string();
  std::vector<int32_t> tokens;
  std::mt19937 rng(3);
  for (int i = 0; i < 23; ++i) tokens.push_back(int32_t(rng() % 50));
  const std::vector<double> want = reference_forward(m, tokens, biases, tied, window, interleaved);
  // Prefill of 15 tokens in chunks of 4, then token-by-token decode.
  KvState st = model->new_state();
  std::vector<float> got, part;
  ForwardOptions fo;
  fo.n_logits = -1;
  fo.chunk_tokens = 4;
  fo.attention_block = 3;
  ASSERT_TRUE(model->forward(&st, tokens.data(), 15, fo, &got).is_ok());
  for (size_t t = 15; t < tokens.size(); ++t) {
    ASSERT_TRUE(model->forward(&st, &tokens[t], 1, fo, &part).is_ok());
    got.insert(got.end(), part.begin(), part.end());
  }
  ASSERT_EQ(got.size(), want.size());
  double d = 0;
  for (size_t i = 0; i < got.size(); ++i) d = std::max(d, std::fabs(got[i] - want[i]));
  EXPECT_LE(d, 1e-4);
}

TEST(TinyModel, LlamaTiedMatchesPlainLoops) { check_tiny(R"("model_type":"llama")", false, true, 0, false); }
TEST(TinyModel, Qwen2BiasesMatchPlainLoops) { check_tiny(R"("model_type":"qwen2")", true, false, 0, false); }
TEST(TinyModel, MistralSlidingWindowMatchesPlainLoops) {
  check_tiny(R"("model_type":"mistral","sliding_window":5)", false, false, 5, false);
}
TEST(TinyModel, InterleavedRopeMatchesPlainLoops) { check_tiny(R"("model_type":"llama")", false, false, 0, true); }

TEST(TinyModel, WrongWeightShapeIsAnError) {
  TinyModel m = make_tiny(R"("model_type":"llama")", false, true, 1);
  const std::string config = R"({"model_type":"llama","hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
      "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"vocab_size":50,"tie_word_embeddings":true})";
  ASSERT_TRUE(write_file_atomic(m.dir + "/config.json", reinterpret_cast<const uint8_t*>(config.data()), config.size())
                  .is_ok());
  auto model = Model::load(m.dir);
  ASSERT_FALSE(model.is_ok());
  EXPECT_NE(model.status().message().find("gate_proj"), std::string::npos) << model.status().message();
}

}  // namespace
}  // namespace kvtc::engine
