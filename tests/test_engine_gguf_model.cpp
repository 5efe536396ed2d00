// A GGUF model in the engine: configuration from metadata, Hugging Face tensor names, llama.cpp's q/k
// row permutation undone, and the tokenizer rebuilt from tokenizer.ggml.* (on SmolLM2-135M-Instruct,
// installed by scripts/models.sh). The forward pass is checked against transformers in
// tests/python/test_smollm2_vs_transformers.py.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "engine/config.hpp"
#include "engine/gguf_model.hpp"
#include "engine/gguf_tokenizer.hpp"
#include "engine/text_io.hpp"
#include "engine/tokenizer.hpp"
#include "engine/weights.hpp"
#include "test_util.hpp"

namespace kvtc::engine {
namespace {

// The SmolLM2 GGUF: $KVTC_GGUF_MODEL, else where scripts/models.sh puts it.
std::string smollm2_path() {
  if (const char* env = std::getenv("KVTC_GGUF_MODEL"); env != nullptr && *env) return env;
  return std::string(KVTC_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

#define SKIP_WITHOUT_SMOLLM2()                                                                           \
  if (!std::filesystem::exists(smollm2_path()))                                                          \
  GTEST_SKIP() << "SmolLM2 GGUF not found at " << smollm2_path() << " (scripts/models.sh installs it)"

TEST(GgufNames, MapsHuggingFaceNames) {
  EXPECT_EQ(gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.12.self_attn.k_proj.weight"), "blk.12.attn_k.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.self_attn.q_proj.bias"), "blk.0.attn_q.bias");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.mlp.down_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.post_attention_layernorm.weight"), "blk.3.ffn_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), "");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.mlp.unknown"), "");
}

// llama.cpp's convert_hf_to_gguf.py permute(): w.reshape(n_head, 2, rows // n_head // 2, cols)
// .swapaxes(1, 2).reshape(rows, cols), written out as loops.
std::vector<float> llama_cpp_permute(const std::vector<float>& w, int64_t rows, int64_t cols, int n_head) {
  std::vector<float> out(w.size());
  const int64_t head_rows = rows / n_head, half = head_rows / 2;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t j = 0; j < half; ++j)
        for (int64_t c = 0; c < cols; ++c)
          out[size_t(((h * half + j) * 2 + s) * cols + c)] = w[size_t((h * head_rows + s * half + j) * cols + c)];
  return out;
}

TEST(GgufNames, UnpermuteInvertsLlamaCppPermute) {
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  for (auto [rows, cols, heads] : {std::tuple{576, 5, 9}, {192, 3, 3}, {8, 1, 1}}) {
    std::vector<float> w(size_t(rows * cols));
    for (auto& x : w) x = g(rng);
    std::vector<float> p = llama_cpp_permute(w, rows, cols, heads);
    ASSERT_NE(p, w);
    ASSERT_TRUE(unpermute_gguf_rows(p.data(), rows, cols, heads).is_ok());
    EXPECT_EQ(p, w) << rows << "x" << cols << " in " << heads << " heads";
  }
  std::vector<float> odd(6 * 2);
  EXPECT_EQ(unpermute_gguf_rows(odd.data(), 6, 2, 2).code(), StatusCode::kInvalidArgument);  // 3 rows a head
  EXPECT_EQ(gguf_permuted_heads("llama", "model.layers.0.self_attn.q_proj.weight", 9, 3), 9);
  EXPECT_EQ(gguf_permuted_heads("llama", "model.layers.0.self_attn.k_proj.weight", 9, 3), 3);
  EXPECT_EQ(gguf_permuted_heads("llama", "model.layers.0.self_attn.v_proj.weight", 9, 3), 0);
  EXPECT_EQ(gguf_permuted_heads("qwen2", "model.layers.0.self_attn.q_proj.weight", 9, 3), 0);
}

TEST(GgufModel, SmolLM2Config) {
  SKIP_WITHOUT_SMOLLM2();
  ASSERT_TRUE(is_gguf_file(smollm2_path()));
  EXPECT_FALSE(is_gguf_file(kvtc::testing::shared_dir() + "/models/kvtc-ref-26m"));
  auto c = ModelConfig::load(smollm2_path());
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->name, "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(c->n_layers, 30);
  EXPECT_EQ(c->hidden_size, 576);
  EXPECT_EQ(c->intermediate_size, 1536);
  EXPECT_EQ(c->n_heads, 9);
  EXPECT_EQ(c->n_kv_heads, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->vocab_size, 49152);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->rope.theta, 100000.0);
  EXPECT_EQ(c->rope.style, RopeStyle::kHalf);
  EXPECT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(int64_t(c->n_layers) * c->n_kv_heads * c->head_dim, 5760);  // p per stream
}

TEST(GgufModel, SmolLM2WeightsByHuggingFaceName) {
  SKIP_WITHOUT_SMOLLM2();
  auto r = WeightReader::open(smollm2_path());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->has("model.embed_tokens.weight"));
  EXPECT_FALSE(r->has("lm_head.weight"));  // tied
  auto shape = r->shape("model.layers.29.self_attn.k_proj.weight");
  ASSERT_TRUE(shape.is_ok());
  EXPECT_EQ(*shape, (std::vector<int64_t>{192, 576}));
  auto bad = r->read("model.layers.0.self_attn.k_proj.weight", {576, 192});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("expected shape"), std::string::npos);
  EXPECT_EQ(r->read("model.layers.30.mlp.up_proj.weight", {1536, 576}).status().code(), StatusCode::kInvalidArgument);
}

class SmolTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_SMOLLM2();
    auto t = Tokenizer::load_for_model(smollm2_path());
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tok_ = std::make_unique<Tokenizer>(std::move(t).value());
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SmolTokenizer, SpecialTokensAndDigits) {
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_EQ(tok_->token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok_->token_id("<|im_start|>"), 1);
  EXPECT_EQ(tok_->token_id("<|im_end|>"), 2);
  EXPECT_TRUE(tok_->is_special(1));
  // SmolLM2's pre-tokenizer splits every digit on its own (Digits(individual_digits=true)).
  auto ids = tok_->encode("<|im_start|>user\nIn 2024 I paid 31415 dollars.<|im_end|>", true);
  ASSERT_TRUE(ids.is_ok()) << ids.status().to_string();
  ASSERT_GE(ids->size(), 10u);
  EXPECT_EQ(ids->front(), 1);  // no BOS added (add_bos_token is false), the literal special token first
  EXPECT_EQ(ids->back(), 2);
  int digit_tokens = 0;
  for (int32_t id : *ids) {
    const std::string b = tok_->token_bytes(id);
    if (b.find_first_of("0123456789") != std::string::npos) {
      EXPECT_EQ(b.size(), 1u) << "token " << id << " '" << b << "' holds a digit and more";
      ++digit_tokens;
    }
  }
  EXPECT_EQ(digit_tokens, 9);
  EXPECT_EQ(tok_->decode(*ids), "<|im_start|>user\nIn 2024 I paid 31415 dollars.<|im_end|>");
  EXPECT_EQ(tok_->decode(*ids, /*skip_special_tokens=*/true), "user\nIn 2024 I paid 31415 dollars.");
}

TEST_F(SmolTokenizer, RoundTripsTheCorpus) {
  const std::string path = kvtc::testing::shared_dir() + "/corpus/code.test.txt.xz";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "corpus not found at " << path;
  auto text = read_text_file(path);
  ASSERT_TRUE(text.is_ok()) << text.status().to_string();
  const auto docs = split_documents(*text);
  ASSERT_GE(docs.size(), 20u);
  size_t n_tokens = 0, n_bytes = 0;
  for (size_t i = 0; i < 20; ++i) {
    const std::string d(docs[i]);
    auto ids = tok_->encode(d, false);
    ASSERT_TRUE(ids.is_ok()) << ids.status().to_string();
    EXPECT_EQ(tok_->decode(*ids), d) << "document " << i;
    n_tokens += ids->size();
    n_bytes += d.size();
  }
  // SmolLM2 packs this code at about 2.5 bytes a token (digits one a token); without its merges it
  // would be about 1.
  EXPECT_GT(double(n_bytes) / double(n_tokens), 2.0);
}

}  // namespace
}  // namespace kvtc::engine
