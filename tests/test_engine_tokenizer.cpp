// The engine's tokenizer against Hugging Face `tokenizers` 0.23 on the same tokenizer.json
// (tests/data/engine_tokenizer_ref.json and engine_tokenizer_corpus.json, made by
// tests/data/make_engine_ref.py): ids must be identical, decode must give the same text.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/text_io.hpp"
#include "engine/tokenizer.hpp"
#include "test_util.hpp"
#include "util/file_io.hpp"

namespace kvtc::engine {
namespace {

using nlohmann::json;

std::string model_dir() { return kvtc::testing::shared_dir() + "/models/kvtc-ref-26m"; }
std::string test_data(const std::string& name) { return std::string(KVTC_SOURCE_DIR) + "/tests/data/" + name; }

json load_json(const std::string& path) {
  auto bytes = read_file(path);
  EXPECT_TRUE(bytes.is_ok()) << bytes.status().to_string();
  if (!bytes.is_ok()) return json();
  return json::parse(bytes->begin(), bytes->end());
}

class RefTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(model_dir() + "/tokenizer.json")) return;
    auto t = Tokenizer::load_for_model(model_dir());
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tok_ = new Tokenizer(std::move(t).value());
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  void SetUp() override {
    if (tok_ == nullptr) GTEST_SKIP() << "reference model not found at " << model_dir();
  }
  static Tokenizer* tok_;
};
Tokenizer* RefTokenizer::tok_ = nullptr;

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

TEST_F(RefTokenizer, MatchesTokenizersOnReferenceTexts) {
  const json ref = load_json(test_data("engine_tokenizer_ref.json"));
  ASSERT_GE(ref["cases"].size(), 30u);
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    auto ids = tok_->encode(text, false);
    ASSERT_TRUE(ids.is_ok()) << ids.status().to_string();
    EXPECT_EQ(*ids, ids_of(c["ids"])) << "text: " << text;
    auto ids_special = tok_->encode(text, true);
    ASSERT_TRUE(ids_special.is_ok());
    EXPECT_EQ(*ids_special, ids_of(c["ids_special"])) << "text: " << text;
    EXPECT_EQ(tok_->decode(*ids), c["decoded"].get<std::string>()) << "text: " << text;
  }
}

TEST_F(RefTokenizer, DecodeMatchesTokenizersOnRandomIds) {
  // Random ids often split UTF-8 sequences: the replacement characters must fall where Rust's
  // from_utf8_lossy puts them.
  const json ref = load_json(test_data("engine_tokenizer_ref.json"));
  for (const auto& c : ref["decode_cases"]) {
    EXPECT_EQ(tok_->decode(ids_of(c["ids"])), c["text"].get<std::string>());
    if (c.contains("text_skip_special")) {
      EXPECT_EQ(tok_->decode(ids_of(c["ids"]), true), c["text_skip_special"].get<std::string>());
    }
  }
}

uint64_t fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids)
    for (int b = 0; b < 4; ++b) {
      h ^= (uint32_t(id) >> (8 * b)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  return h;
}

TEST_F(RefTokenizer, MatchesTokenizersOnWholeCorpusAndRoundTrips) {
  // Every document of the four corpus files (about 6M tokens): same count and same ids (hash) as
  // tokenizers, and decode(encode(doc)) == doc.
  const json ref = load_json(test_data("engine_tokenizer_corpus.json"));
  for (const char* name : {"prose.valid", "code.valid", "prose.test", "code.test"}) {
    const std::string path = kvtc::testing::shared_dir() + "/corpus/" + name + ".txt.xz";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not found";
    auto text = read_text_file(path);
    ASSERT_TRUE(text.is_ok()) << text.status().to_string();
    const auto docs = split_documents(*text);
    const auto& want = ref[name];
    ASSERT_EQ(docs.size(), want.size()) << name;
    int mismatches = 0, bad_round_trips = 0;
    for (size_t i = 0; i < docs.size(); ++i) {
      auto ids = tok_->encode(docs[i], false);
      ASSERT_TRUE(ids.is_ok()) << ids.status().to_string();
      char hex[17];
      std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(fnv1a64(*ids)));
      if (int64_t(ids->size()) != want[i][0].get<int64_t>() || want[i][1].get<std::string>() != hex) {
        if (++mismatches <= 3) ADD_FAILURE() << name << " document " << i << ": ids differ from tokenizers";
      }
      if (tok_->decode(*ids) != docs[i]) ++bad_round_trips;
    }
    EXPECT_EQ(mismatches, 0) << name;
    EXPECT_EQ(bad_round_trips, 0) << name;
  }
}

TEST_F(RefTokenizer, RoundTripsArbitraryUnicode) {
  const std::vector<std::string> texts = {
      "", "plain", "  two  spaces  ", "tab\tnew\nline\r\n", "naïve café 日本語 😀 👨‍👩‍👧",
      "\xF0\x9F\x8F\xB3\xEF\xB8\x8F\xE2\x80\x8D\xF0\x9F\x8C\x88 flag", "<|eos|> special inside", "\x01\x02\x7F"};
  for (const auto& t : texts) {
    auto ids = tok_->encode(t, false);
    ASSERT_TRUE(ids.is_ok());
    EXPECT_EQ(tok_->decode(*ids), t);
  }
  auto with_bos = tok_->encode("x", true);
  ASSERT_TRUE(with_bos.is_ok());
  EXPECT_EQ(with_bos->front(), 0);  // the post-processor's <|bos|>
  EXPECT_EQ(tok_->decode(*with_bos, /*skip_special_tokens=*/true), "x");
  EXPECT_EQ(tok_->token_id("<|eos|>"), 1);
  EXPECT_TRUE(tok_->is_special(2));
  EXPECT_FALSE(tok_->is_special(100));
}

TEST_F(RefTokenizer, RejectsInvalidUtf8) {
  for (const std::string bad : {"\xC3", "a\xFF", "\xED\xA0\x80", "\xC0\xAF", "\xF4\x90\x80\x80"}) {
    auto ids = tok_->encode(bad, false);
    EXPECT_FALSE(ids.is_ok());
    EXPECT_EQ(ids.status().code(), StatusCode::kInvalidArgument);
  }
}

// ---------------------------------------------------------------------------------------------------
// Without the model: hand-made tokenizer.json files for the pieces kvtc-ref-26m does not use.
// ---------------------------------------------------------------------------------------------------

TEST(Utf8, LossyReplacesMaximalInvalidSubsequences) {
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  // E2 82 is a truncated 3-byte sequence: one replacement for both bytes (Rust, WHATWG).
  EXPECT_EQ(utf8_lossy("\xE2\x82" "x"), "\xEF\xBF\xBD" "x");
  // ED A0 80 (a surrogate): ED is not followed by a valid continuation -> three replacements.
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xF0\x9F\x98"));
}

// Byte-level vocabulary of the characters of `chars` plus the merges given, as JSON text.
std::string tiny_tokenizer(const std::string& pre_tokenizer, const std::vector<std::pair<std::string, std::string>>& merges,
                           bool ignore_merges = false, const std::string& added = "[]") {
  json vocab = json::object();
  int id = 0;
  for (char c : std::string("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-<>|")) vocab[std::string(1, c)] = id++;
  vocab["\xC4\xA0"] = id++;  // "Ġ", the byte-level space
  vocab["\xC4\x8A"] = id++;  // "Ċ", newline
  json m = json::array();
  for (auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    m.push_back(json::array({a, b}));
  }
  json j = {{"version", "1.0"},
            {"added_tokens", json::parse(added)},
            {"normalizer", nullptr},
            {"pre_tokenizer", json::parse(pre_tokenizer)},
            {"post_processor", nullptr},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}, {"ignore_merges", ignore_merges}}}};
  return j.dump();
}

std::vector<std::string> pieces(const Tokenizer& t, const std::string& text) {
  auto ids = t.encode(text, false);
  EXPECT_TRUE(ids.is_ok()) << ids.status().to_string();
  std::vector<std::string> out;
  for (int32_t id : *ids) out.push_back(t.token_bytes(id));
  return out;
}

TEST(TokenizerPipeline, MergesApplyByRankNotByPosition) {
  // "abc": the merge (b, c) has the better rank, so it wins over (a, b) although (a, b) comes first.
  auto t = Tokenizer::parse(tiny_tokenizer(R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true})",
                                           {{"b", "c"}, {"a", "b"}, {"a", "bc"}}));
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(pieces(*t, "abc"), std::vector<std::string>({"abc"}));
  EXPECT_EQ(pieces(*t, "ab"), std::vector<std::string>({"ab"}));
  EXPECT_EQ(pieces(*t, "abab"), std::vector<std::string>({"ab", "ab"}));
  // The GPT-2 regex keeps " a" apart from "a": a leading space belongs to the next word.
  EXPECT_EQ(pieces(*t, "ab c"), std::vector<std::string>({"ab", " ", "c"}));
}

TEST(TokenizerPipeline, SplitPreTokenizerBehaviours) {
  const std::string seq_prefix = R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\d"},"behavior":")";
  const std::string seq_suffix = R"(","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]})";
  auto run = [&](const std::string& behavior) {
    auto t = Tokenizer::parse(tiny_tokenizer(seq_prefix + behavior + seq_suffix, {{"a", "b"}, {"ab", "1"}, {"1", "ab"}}));
    EXPECT_TRUE(t.is_ok()) << t.status().to_string();
    return pieces(*t, "ab1ab");
  };
  EXPECT_EQ(run("Isolated"), std::vector<std::string>({"ab", "1", "ab"}));
  EXPECT_EQ(run("Removed"), std::vector<std::string>({"ab", "ab"}));
  EXPECT_EQ(run("MergedWithPrevious"), std::vector<std::string>({"ab1", "ab"}));
  EXPECT_EQ(run("MergedWithNext"), std::vector<std::string>({"ab", "1ab"}));
  EXPECT_EQ(run("Contiguous"), std::vector<std::string>({"ab", "1", "ab"}));
}

TEST(TokenizerPipeline, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  // With ignore_merges (Llama 3), a pre-token that is itself in the vocabulary is one token even if
  // the merges would not build it.
  const std::string pre = R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true})";
  auto t = Tokenizer::parse(tiny_tokenizer(pre, {{"a", "b"}, {"c", "d"}, {"b", "c"}, {"a", "bc"}, {"abc", "d"}}, true));
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(pieces(*t, "abcd"), std::vector<std::string>({"abcd"}));
  auto u = Tokenizer::parse(tiny_tokenizer(pre, {{"a", "b"}, {"c", "d"}, {"b", "c"}, {"a", "bc"}, {"abc", "d"}}, false));
  ASSERT_TRUE(u.is_ok());
  EXPECT_EQ(pieces(*u, "abcd"), std::vector<std::string>({"ab", "cd"}));
}

TEST(TokenizerPipeline, AddedTokensLeftmostLongestWithStrip) {
  const std::string pre = R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true})";
  const std::string added = R"([{"id":100,"content":"<|a|>","special":true,"lstrip":false,"rstrip":false},
      {"id":101,"content":"<|a|><|b|>","special":true},
      {"id":102,"content":"<m>","special":false,"lstrip":true,"rstrip":true}])";
  auto t = Tokenizer::parse(tiny_tokenizer(pre, {}, false, added));
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  auto ids = t->encode("x<|a|><|b|>y<|a|>", false);
  ASSERT_TRUE(ids.is_ok());
  const int32_t x = t->token_id("x"), y = t->token_id("y");
  EXPECT_EQ(*ids, std::vector<int32_t>({x, 101, y, 100}));
  auto stripped = t->encode("x  <m>  y", false);
  ASSERT_TRUE(stripped.is_ok());
  EXPECT_EQ(*stripped, std::vector<int32_t>({x, 102, y}));
  EXPECT_EQ(t->decode({x, 101, y}, true), "xy");
}

TEST(TokenizerPipeline, RejectsWhatItCannotReproduce) {
  const std::string pre = R"({"type":"Metaspace","replacement":"_"})";
  auto t = Tokenizer::parse(tiny_tokenizer(pre, {}));
  EXPECT_FALSE(t.is_ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnsupported);
  EXPECT_FALSE(Tokenizer::parse("{").is_ok());
  EXPECT_FALSE(Tokenizer::parse(R"({"model":{"type":"Unigram"}})").is_ok());
}

TEST(TextIo, SplitsCorpusDocuments) {
  const std::string text = "doc one\nline 2\n\x1e\ndoc two\n";
  auto docs = split_documents(text);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0], "doc one\nline 2");
  EXPECT_EQ(docs[1], "doc two");
  EXPECT_EQ(split_documents("single").size(), 1u);
  EXPECT_FALSE(read_text_file("/nonexistent/file.txt.xz").is_ok());
}

}  // namespace
}  // namespace kvtc::engine
