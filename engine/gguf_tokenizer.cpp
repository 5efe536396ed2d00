#include "engine/gguf_tokenizer.hpp"

#include <nlohmann/json.hpp>

#include "engine/gguf_model.hpp"
#include "engine/tokenizer.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {
namespace {

using nlohmann::json;

// GGUF token types (llama.cpp's llama_token_type).
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json split_isolated(const std::string& regex) {
  return {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
}

// The pre-tokenizer of the Hugging Face tokenizer.json that llama.cpp names `pre`.
Result<json> pre_tokenizer(const std::string& pre, bool* ignore_merges) {
  *ignore_merges = false;
  if (pre == "gpt-2") return byte_level(true);
  if (pre == "smollm" || pre == "starcoder" || pre == "refact")
    return json{{"type", "Sequence"}, {"pretokenizers", json::array({split_isolated(R"(\p{N})"), byte_level(true)})}};
  if (pre == "qwen2" || pre == "deepseek-r1-qwen")
    return json{{"type", "Sequence"},
                {"pretokenizers",
                 json::array({split_isolated(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
                                             R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
                              byte_level(false)})}};
  if (pre == "llama-bpe") {
    *ignore_merges = true;
    return json{{"type", "Sequence"},
                {"pretokenizers",
                 json::array({split_isolated(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
                                             R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
                              byte_level(false)})}};
  }
  return unsupported("gguf: tokenizer pre-tokenizer \"" + pre +
                     "\" (supported: gpt-2, smollm, starcoder, refact, qwen2, deepseek-r1-qwen, llama-bpe)");
}

Result<json> post_processor(const GgufFile& f, const std::vector<std::string>& tokens) {
  KVTC_ASSIGN_OR_RETURN(bool add_bos, f.get_bool_or("tokenizer.ggml.add_bos_token", false));
  KVTC_ASSIGN_OR_RETURN(bool add_eos, f.get_bool_or("tokenizer.ggml.add_eos_token", false));
  if (!add_bos && !add_eos) return json();
  json single = json::array(), specials = json::object();
  auto special = [&](const char* key) -> Status {
    KVTC_ASSIGN_OR_RETURN(int64_t id, f.get_int(key));
    if (id < 0 || id >= int64_t(tokens.size())) return invalid_argument("gguf: " + std::string(key) + " out of range");
    const std::string& name = tokens[size_t(id)];
    single.push_back({{"SpecialToken", {{"id", name}, {"type_id", 0}}}});
    specials[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
    return Status::ok();
  };
  if (add_bos) KVTC_RETURN_IF_ERROR(special("tokenizer.ggml.bos_token_id"));
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos) KVTC_RETURN_IF_ERROR(special("tokenizer.ggml.eos_token_id"));
  return json{{"type", "TemplateProcessing"}, {"single", single}, {"pair", json::array()}, {"special_tokens", specials}};
}

}  // namespace

Result<std::string> tokenizer_json_from_gguf(const GgufFile& f) {
  KVTC_ASSIGN_OR_RETURN(const std::string model, f.get_string("tokenizer.ggml.model"));
  if (model != "gpt2")
    return unsupported("gguf: tokenizer model \"" + model + "\" (supported: gpt2, byte-level BPE)");
  const GgufValue* tok = f.find("tokenizer.ggml.tokens");
  const GgufValue* types = f.find("tokenizer.ggml.token_type");
  const GgufValue* merges = f.find("tokenizer.ggml.merges");
  if (tok == nullptr || !tok->is_array_of(GgufValueType::kString) || tok->strings.empty())
    return invalid_argument("gguf: tokenizer.ggml.tokens is missing or not a list of strings");
  if (merges == nullptr || !merges->is_array_of(GgufValueType::kString))
    return invalid_argument("gguf: tokenizer.ggml.merges is missing or not a list of strings");
  if (types != nullptr && (types->ints.size() != tok->strings.size()))
    return invalid_argument("gguf: tokenizer.ggml.token_type does not have one entry per token");
  const std::vector<std::string>& tokens = tok->strings;

  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    // JSON text must be UTF-8; byte-level vocabularies always are, so anything else is a damaged file.
    if (!is_valid_utf8(tokens[id])) return corrupt("gguf: token " + std::to_string(id) + " is not valid UTF-8");
    if (vocab.contains(tokens[id])) return corrupt("gguf: token \"" + tokens[id] + "\" appears twice");
    vocab[tokens[id]] = id;
    const int64_t type = types != nullptr ? types->ints[id] : 1;
    if (type == kTokenControl || type == kTokenUserDefined) {
      const bool special = type == kTokenControl;
      added.push_back({{"id", id}, {"content", tokens[id]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", !special}, {"special", special}});
    }
  }
  for (const std::string& m : merges->strings) {
    if (!is_valid_utf8(m) || m.find(' ') == std::string::npos)
      return corrupt("gguf: merge \"" + m + "\" is not two tokens separated by a space");
  }
  KVTC_ASSIGN_OR_RETURN(const std::string pre, f.get_string("tokenizer.ggml.pre"));
  bool ignore_merges = false;
  KVTC_ASSIGN_OR_RETURN(json pre_tok, pre_tokenizer(pre, &ignore_merges));
  KVTC_ASSIGN_OR_RETURN(json post, post_processor(f, tokens));
  json j = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tok},
      {"post_processor", post},
      {"decoder", byte_level(true)},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
        {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merges->strings}}},
  };
  return j.dump();
}

Result<Tokenizer> Tokenizer::load_for_model(const std::string& model_path) {
  if (!is_gguf_file(model_path)) return load(model_path + "/tokenizer.json");
  KVTC_ASSIGN_OR_RETURN(GgufFile f, GgufFile::open(model_path));
  auto text = tokenizer_json_from_gguf(f);
  if (!text.is_ok()) return text.status().with_context(model_path);
  auto t = parse(*text);
  if (!t.is_ok()) return t.status().with_context(model_path);
  return t;
}

}  // namespace kvtc::engine
