#include "engine/tokenizer.hpp"

#include <algorithm>
#include <queue>
#include <unordered_map>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <nlohmann/json.hpp>

#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {
namespace {

using nlohmann::json;

// The pattern `tokenizers` uses for ByteLevel with use_regex (GPT-2's).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------------

// Length of the well-formed sequence starting at s[i], or 0 when it is not one (RFC 3629 table 3-7).
size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return uint8_t(s[k]); };
  const uint8_t c = b(i);
  const size_t left = s.size() - i;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return (left >= 2 && (b(i + 1) & 0xC0) == 0x80) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (left < 2) return 0;
    const uint8_t c1 = b(i + 1);
    const uint8_t lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    if (c1 < lo || c1 > hi) return 0;
    return (left >= 3 && (b(i + 2) & 0xC0) == 0x80) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (left < 2) return 0;
    const uint8_t c1 = b(i + 1);
    const uint8_t lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    if (c1 < lo || c1 > hi) return 0;
    if (left < 3 || (b(i + 2) & 0xC0) != 0x80) return 0;
    return (left >= 4 && (b(i + 3) & 0xC0) == 0x80) ? 4 : 0;
  }
  return 0;
}

// Bytes of the maximal prefix of an ill-formed sequence at s[i] (at least 1): a lead byte followed by
// the continuation bytes that were still valid for it. This is the unit one U+FFFD replaces.
size_t utf8_invalid_length(std::string_view s, size_t i) {
  const uint8_t c = uint8_t(s[i]);
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
  else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
  else return 1;
  size_t n = 1;
  for (size_t k = 0; k < need && i + n < s.size(); ++k) {
    const uint8_t x = uint8_t(s[i + n]);
    if (k == 0 ? (x < lo || x > hi) : (x & 0xC0) != 0x80) break;
    ++n;
  }
  return n;
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

// Decodes the well-formed sequence of length n at s[i].
uint32_t decode_utf8(std::string_view s, size_t i, size_t n) {
  const auto b = [&](size_t k) { return uint32_t(uint8_t(s[i + k])); };
  switch (n) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the other 68 bytes take
// code points 256.. in byte order, so every byte becomes one printable character.
struct ByteMap {
  std::string byte_to_char[256];                 // UTF-8 of the character for each byte
  std::unordered_map<uint32_t, uint8_t> char_to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
      append_utf8(cp, &byte_to_char[b]);
      char_to_byte[cp] = uint8_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// ---------------------------------------------------------------------------------------------------
// PCRE2
// ---------------------------------------------------------------------------------------------------

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
struct JitStackDeleter {
  void operator()(pcre2_jit_stack* s) const { pcre2_jit_stack_free(s); }
};

// A compiled pattern. Matching state (match data, JIT stack) is made per call, so one Regex serves
// several threads.
class Regex {
 public:
  static Result<std::shared_ptr<Regex>> compile(const std::string& pattern, bool literal) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err,
                                     &err_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return invalid_argument("tokenizer.json: regex /" + pattern + "/ at offset " + std::to_string(err_offset) +
                              ": " + reinterpret_cast<const char*>(msg));
    }
    auto r = std::make_shared<Regex>();
    r->code_.reset(code);
    // JIT makes matching several times faster; without it (unsupported CPU, hardened kernel) the
    // interpreter gives the same matches.
    r->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    return r;
  }

  // Appends the [start, end) byte ranges of all non-empty matches in `text`.
  Status find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const {
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    if (!md) return Status(StatusCode::kOutOfMemory, "pcre2: match data");
    std::unique_ptr<pcre2_jit_stack, JitStackDeleter> stack;
    pcre2_match_context* mctx = nullptr;
    std::unique_ptr<pcre2_match_context, void (*)(pcre2_match_context*)> mctx_owner(nullptr, pcre2_match_context_free);
    if (jit_) {
      // Long runs of whitespace backtrack through (?!\S): give the JIT more than its 32 KiB default.
      stack.reset(pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr));
      mctx = pcre2_match_context_create(nullptr);
      mctx_owner.reset(mctx);
      if (stack && mctx) pcre2_jit_stack_assign(mctx, nullptr, stack.get());
    }
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos <= text.size()) {
      // The subject was checked once by the caller (is_valid_utf8), so PCRE2 need not check it again
      // at every start offset, which would make the scan quadratic.
      int rc = pcre2_match(code_.get(), subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), mctx);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        return internal_error(std::string("pcre2_match: ") + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      size_t start = ov[0], end = ov[1];
      if (end > start) {
        out->emplace_back(start, end);
        pos = end;
      } else {
        // Empty match: step over one whole character.
        if (start >= text.size()) break;
        size_t n = utf8_sequence_length(text, start);
        pos = start + std::max<size_t>(n, 1);
      }
    }
    return Status::ok();
  }

 private:
  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  bool jit_ = false;
};

// ---------------------------------------------------------------------------------------------------
// Pipeline pieces
// ---------------------------------------------------------------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum Kind { kByteLevel, kSplit } kind = kSplit;
  std::shared_ptr<Regex> regex;  // null: ByteLevel without regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

struct TemplateItem {
  bool is_sequence = false;     // sequence A
  std::vector<int32_t> ids;     // special token ids
};

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

Result<SplitBehavior> parse_behavior(const std::string& s) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return unsupported("tokenizer.json: split behavior \"" + s + "\"");
}

// Splits `text` by the matches of `re` into pieces, as tokenizers' NormalizedString::split does.
Status split_pieces(const Regex& re, SplitBehavior behavior, bool invert, std::string_view text,
                    std::vector<std::string>* out) {
  std::vector<std::pair<size_t, size_t>> matches;
  KVTC_RETURN_IF_ERROR(re.find_all(text, &matches));
  struct Seg {
    size_t start, end;
    bool match;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (auto [s, e] : matches) {
    if (s > prev) segs.push_back({prev, s, false});
    segs.push_back({s, e, true});
    prev = e;
  }
  if (prev < text.size()) segs.push_back({prev, text.size(), false});
  if (invert)
    for (auto& s : segs) s.match = !s.match;

  std::vector<Seg> merged;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      merged = segs;
      break;
    case SplitBehavior::kRemoved:
      for (auto& s : segs)
        if (!s.match) merged.push_back(s);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (auto& s : segs) {
        if (s.match && !previous_match && !merged.empty()) merged.back().end = s.end;
        else merged.push_back(s);
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous_match && !merged.empty()) merged.back().start = it->start;
        else merged.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case SplitBehavior::kContiguous:
      for (auto& s : segs) {
        if (!merged.empty() && merged.back().match == s.match) merged.back().end = s.end;
        else merged.push_back(s);
      }
      break;
  }
  for (auto& s : merged)
    if (s.end > s.start) out->emplace_back(text.substr(s.start, s.end - s.start));
  return Status::ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Public UTF-8 helpers
// ---------------------------------------------------------------------------------------------------

bool is_valid_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    size_t n = utf8_sequence_length(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    size_t n = utf8_sequence_length(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += utf8_invalid_length(bytes, i);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;          // model vocabulary (byte-level strings)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a, b) -> (rank, merged id)
  bool ignore_merges = false;
  std::vector<std::string> id_token;  // token string per id (vocab or added content)
  std::vector<std::string> id_bytes;  // bytes per id, as the ByteLevel decoder gives them
  std::vector<uint8_t> id_special;
  std::vector<AddedToken> added;
  std::vector<std::vector<int>> added_by_first_byte;  // indices into `added`, longest first
  std::vector<PreTokenizerStep> pre;
  std::vector<TemplateItem> single_template;  // empty: no post-processing
  bool has_template = false;

  Status bpe(std::string_view word, std::vector<int32_t>* out) const;
  Status encode_segment(std::string_view text, std::vector<int32_t>* out) const;
  // Cuts text at added tokens: (is_added, id or -1, [start, end)).
  struct Piece {
    int32_t added_id;  // -1: ordinary text
    size_t start, end;
  };
  std::vector<Piece> split_added(std::string_view text) const;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::load(const std::string& path) {
  KVTC_ASSIGN_OR_RETURN(auto bytes, read_file(path));
  auto r = parse(std::string(bytes.begin(), bytes.end()));
  if (!r.is_ok()) return r.status().with_context(path);
  return r;
}

namespace {

Status parse_pre_tokenizer(const json& j, std::vector<PreTokenizerStep>* steps) {
  if (j.is_null()) return Status::ok();
  if (!j.is_object() || !j.contains("type")) return invalid_argument("tokenizer.json: bad pre_tokenizer");
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    for (auto& s : j.value("pretokenizers", json::array())) KVTC_RETURN_IF_ERROR(parse_pre_tokenizer(s, steps));
    return Status::ok();
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::kByteLevel;
    step.add_prefix_space = j.value("add_prefix_space", true);
    if (j.value("use_regex", true)) {
      KVTC_ASSIGN_OR_RETURN(step.regex, Regex::compile(kGpt2Pattern, false));
    }
    steps->push_back(std::move(step));
    return Status::ok();
  }
  if (type == "Split") {
    step.kind = PreTokenizerStep::kSplit;
    const json& p = j.value("pattern", json::object());
    if (p.contains("Regex") && p["Regex"].is_string()) {
      KVTC_ASSIGN_OR_RETURN(step.regex, Regex::compile(p["Regex"].get<std::string>(), false));
    } else if (p.contains("String") && p["String"].is_string()) {
      KVTC_ASSIGN_OR_RETURN(step.regex, Regex::compile(p["String"].get<std::string>(), true));
    } else {
      return invalid_argument("tokenizer.json: Split without a pattern");
    }
    KVTC_ASSIGN_OR_RETURN(step.behavior, parse_behavior(j.value("behavior", std::string("Isolated"))));
    step.invert = j.value("invert", false);
    steps->push_back(std::move(step));
    return Status::ok();
  }
  return unsupported("tokenizer.json: pre_tokenizer \"" + type + "\" (supported: ByteLevel, Split, Sequence)");
}

Status parse_post_processor(const json& j, const std::unordered_map<std::string, int32_t>& token_ids,
                            std::vector<TemplateItem>* tmpl, bool* has_template) {
  if (j.is_null()) return Status::ok();
  const std::string type = j.value("type", std::string());
  if (type == "ByteLevel") return Status::ok();  // offsets only
  if (type == "Sequence") {
    for (auto& p : j.value("processors", json::array()))
      KVTC_RETURN_IF_ERROR(parse_post_processor(p, token_ids, tmpl, has_template));
    return Status::ok();
  }
  if (type != "TemplateProcessing")
    return unsupported("tokenizer.json: post_processor \"" + type + "\" (supported: TemplateProcessing, ByteLevel)");
  const json specials = j.value("special_tokens", json::object());
  tmpl->clear();
  *has_template = true;
  for (auto& item : j.value("single", json::array())) {
    TemplateItem t;
    if (item.contains("Sequence")) {
      if (item["Sequence"].value("id", std::string("A")) != "A")
        return unsupported("tokenizer.json: single template refers to sequence B");
      t.is_sequence = true;
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].value("id", std::string());
      if (specials.contains(name) && specials[name].contains("ids")) {
        for (auto& id : specials[name]["ids"]) t.ids.push_back(id.get<int32_t>());
      } else if (auto it = token_ids.find(name); it != token_ids.end()) {
        t.ids.push_back(it->second);
      } else {
        return invalid_argument("tokenizer.json: template special token \"" + name + "\" is unknown");
      }
    } else {
      return invalid_argument("tokenizer.json: bad template item");
    }
    tmpl->push_back(std::move(t));
  }
  return Status::ok();
}

Status check_decoder(const json& j) {
  if (j.is_null()) return Status::ok();
  const std::string type = j.value("type", std::string());
  if (type == "ByteLevel") return Status::ok();
  if (type == "Sequence") {
    for (auto& d : j.value("decoders", json::array())) KVTC_RETURN_IF_ERROR(check_decoder(d));
    return Status::ok();
  }
  return unsupported("tokenizer.json: decoder \"" + type + "\" (supported: ByteLevel)");
}

}  // namespace

Result<Tokenizer> Tokenizer::parse(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument("tokenizer.json: not a JSON object");
  auto impl = std::make_unique<Impl>();
  const json& model = j.value("model", json::object());
  if (model.value("type", std::string("BPE")) != "BPE")
    return unsupported("tokenizer.json: model type \"" + model.value("type", std::string()) + "\" (supported: BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "")
      return unsupported(std::string("tokenizer.json: BPE ") + key + " is not supported");
  }
  if (model.value("byte_fallback", false)) return unsupported("tokenizer.json: BPE byte_fallback is not supported");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0)
    return unsupported("tokenizer.json: BPE dropout is not supported");
  impl->ignore_merges = model.value("ignore_merges", false);

  const json& normalizer = j.contains("normalizer") ? j["normalizer"] : json();
  if (!normalizer.is_null() && normalizer.value("type", std::string()) != "NFC")
    return unsupported("tokenizer.json: normalizer \"" + normalizer.value("type", std::string()) +
                       "\" (supported: none, NFC)");

  // Vocabulary.
  const json& vocab = model.value("vocab", json::object());
  if (!vocab.is_object() || vocab.empty()) return invalid_argument("tokenizer.json: empty BPE vocabulary");
  int32_t max_id = -1;
  for (auto& [tok, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24))
      return invalid_argument("tokenizer.json: bad id for token \"" + tok + "\"");
    impl->vocab[tok] = id.get<int32_t>();
    max_id = std::max(max_id, id.get<int32_t>());
  }
  // Added tokens.
  for (auto& a : j.value("added_tokens", json::array())) {
    AddedToken t;
    t.content = a.value("content", std::string());
    t.id = a.value("id", -1);
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    if (t.content.empty() || t.id < 0 || t.id > (1 << 24)) return invalid_argument("tokenizer.json: bad added token");
    max_id = std::max(max_id, t.id);
    impl->added.push_back(std::move(t));
  }
  impl->id_token.assign(size_t(max_id) + 1, std::string());
  impl->id_special.assign(size_t(max_id) + 1, 0);
  for (auto& [tok, id] : impl->vocab) impl->id_token[id] = tok;
  std::unordered_map<std::string, int32_t> token_ids = impl->vocab;
  for (auto& a : impl->added) {
    impl->id_token[a.id] = a.content;
    impl->id_special[a.id] = a.special;
    token_ids[a.content] = a.id;
  }
  impl->added_by_first_byte.assign(256, {});
  for (size_t i = 0; i < impl->added.size(); ++i)
    impl->added_by_first_byte[uint8_t(impl->added[i].content[0])].push_back(int(i));
  for (auto& list : impl->added_by_first_byte)
    std::stable_sort(list.begin(), list.end(), [&](int a, int b) {
      return impl->added[a].content.size() > impl->added[b].content.size();
    });
  // Bytes per id as the ByteLevel decoder gives them: each character mapped back to its byte, or the
  // token's own UTF-8 when some character has no byte (tokenizers does the same).
  const ByteMap& bm = byte_map();
  impl->id_bytes.resize(impl->id_token.size());
  for (size_t id = 0; id < impl->id_token.size(); ++id) {
    const std::string& t = impl->id_token[id];
    std::string bytes;
    bool ok = true;
    for (size_t i = 0; i < t.size() && ok;) {
      size_t n = utf8_sequence_length(t, i);
      if (n == 0) { ok = false; break; }
      auto it = bm.char_to_byte.find(decode_utf8(t, i, n));
      if (it == bm.char_to_byte.end()) ok = false;
      else bytes.push_back(char(it->second));
      i += n;
    }
    impl->id_bytes[id] = ok ? bytes : t;
  }
  // Merges: "a b" strings (older files) or ["a", "b"] pairs; rank is the position in the list.
  const json& merges = model.value("merges", json::array());
  int32_t rank = 0;
  for (auto& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return invalid_argument("tokenizer.json: bad merge \"" + s + "\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return invalid_argument("tokenizer.json: bad merge entry");
    }
    auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), iab = impl->vocab.find(a + b);
    if (ia == impl->vocab.end() || ib == impl->vocab.end() || iab == impl->vocab.end())
      return invalid_argument("tokenizer.json: merge \"" + a + " " + b + "\" uses tokens not in the vocabulary");
    impl->merges.emplace(pair_key(ia->second, ib->second), std::make_pair(rank, iab->second));
    ++rank;
  }
  KVTC_RETURN_IF_ERROR(parse_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), &impl->pre));
  bool seen_byte_level = false;
  for (auto& s : impl->pre) {
    if (s.kind == PreTokenizerStep::kByteLevel) seen_byte_level = true;
  }
  if (!seen_byte_level) return unsupported("tokenizer.json: only byte-level BPE (a ByteLevel pre_tokenizer) is supported");
  KVTC_RETURN_IF_ERROR(parse_post_processor(j.contains("post_processor") ? j["post_processor"] : json(), token_ids,
                                            &impl->single_template, &impl->has_template));
  KVTC_RETURN_IF_ERROR(check_decoder(j.contains("decoder") ? j["decoder"] : json()));
  return Tokenizer(std::move(impl));
}

// BPE of one pre-token (already in byte-level characters), as tokenizers' Word::merge_all: a heap of
// candidate merges ordered by (rank, position); a popped merge is applied only if its pair still
// stands. Linear-ish in the word length, so a 100 KB run without spaces stays fast.
Status Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges) {
    if (auto it = vocab.find(std::string(word)); it != vocab.end()) {
      out->push_back(it->second);
      return Status::ok();
    }
  }
  std::vector<int32_t> id;
  for (size_t i = 0; i < word.size();) {
    size_t n = utf8_sequence_length(word, i);
    if (n == 0) return internal_error("bpe: invalid UTF-8 after pre-tokenization");
    auto it = vocab.find(std::string(word.substr(i, n)));
    // A character outside the vocabulary is dropped, as tokenizers does without an unk token.
    if (it != vocab.end()) id.push_back(it->second);
    i += n;
  }
  const int n = int(id.size());
  if (n <= 1) {
    out->insert(out->end(), id.begin(), id.end());
    return Status::ok();
  }
  std::vector<int> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    auto it = merges.find(pair_key(id[pos], id[next[pos]]));
    if (it != merges.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const int right = next[c.pos];
    auto it = merges.find(pair_key(id[c.pos], id[right]));
    if (it == merges.end() || it->second.second != c.new_id) continue;
    id[c.pos] = c.new_id;
    alive[right] = 0;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  for (int i = 0; i >= 0; i = next[i]) out->push_back(id[i]);
  return Status::ok();
}

Status Tokenizer::Impl::encode_segment(std::string_view text, std::vector<int32_t>* out) const {
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next_pieces;
  const ByteMap& bm = byte_map();
  for (const auto& step : pre) {
    next_pieces.clear();
    for (auto& p : pieces) {
      if (step.kind == PreTokenizerStep::kSplit) {
        KVTC_RETURN_IF_ERROR(split_pieces(*step.regex, step.behavior, step.invert, p, &next_pieces));
        continue;
      }
      std::string s = (step.add_prefix_space && (p.empty() || p[0] != ' ')) ? " " + p : p;
      std::vector<std::string> split;
      if (step.regex) {
        KVTC_RETURN_IF_ERROR(split_pieces(*step.regex, SplitBehavior::kIsolated, false, s, &split));
      } else {
        split.push_back(std::move(s));
      }
      for (auto& q : split) {
        std::string mapped;
        mapped.reserve(q.size() * 2);
        for (unsigned char c : q) mapped += bm.byte_to_char[c];
        next_pieces.push_back(std::move(mapped));
      }
    }
    pieces.swap(next_pieces);
  }
  for (auto& p : pieces) KVTC_RETURN_IF_ERROR(bpe(p, out));
  return Status::ok();
}

namespace {
bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_word_byte(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (c & 0x80);
}
}  // namespace

std::vector<Tokenizer::Impl::Piece> Tokenizer::Impl::split_added(std::string_view text) const {
  std::vector<Piece> out;
  if (added.empty()) {
    out.push_back({-1, 0, text.size()});
    return out;
  }
  size_t seg_start = 0;  // start of the pending ordinary text
  size_t i = 0;
  while (i < text.size()) {
    const auto& cands = added_by_first_byte[uint8_t(text[i])];
    const AddedToken* hit = nullptr;
    for (int idx : cands) {  // longest first: the first hit is the leftmost-longest at i
      const AddedToken& a = added[idx];
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        const bool left_ok = i == 0 || !is_word_byte(text[i - 1]);
        const size_t e = i + a.content.size();
        const bool right_ok = e >= text.size() || !is_word_byte(text[e]);
        if (!left_ok || !right_ok) continue;
      }
      hit = &a;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t start = i, end = i + hit->content.size();
    if (hit->lstrip)
      while (start > seg_start && is_ascii_space(text[start - 1])) --start;
    if (hit->rstrip)
      while (end < text.size() && is_ascii_space(text[end])) ++end;
    if (start > seg_start) out.push_back({-1, seg_start, start});
    out.push_back({hit->id, start, end});
    seg_start = i = end;
  }
  if (seg_start < text.size()) out.push_back({-1, seg_start, text.size()});
  return out;
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!is_valid_utf8(text)) return invalid_argument("tokenizer: input is not valid UTF-8");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const auto& piece : impl_->split_added(text)) {
    if (piece.added_id >= 0) {
      ids.push_back(piece.added_id);
    } else {
      KVTC_RETURN_IF_ERROR(impl_->encode_segment(text.substr(piece.start, piece.end - piece.start), &ids));
    }
  }
  if (!add_special_tokens || !impl_->has_template) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const auto& item : impl_->single_template) {
    if (item.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
    else out.insert(out.end(), item.ids.begin(), item.ids.end());
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || size_t(id) >= impl_->id_bytes.size()) return {};
  return impl_->id_bytes[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= impl_->id_bytes.size()) continue;
    if (skip_special_tokens && impl_->id_special[id]) continue;
    bytes += impl_->id_bytes[id];
  }
  return utf8_lossy(bytes);
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->id_token.size()); }

int32_t Tokenizer::token_id(std::string_view token) const {
  for (auto& a : impl_->added)
    if (a.content == token) return a.id;
  auto it = impl_->vocab.find(std::string(token));
  return it == impl_->vocab.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->id_special.size() && impl_->id_special[id];
}

}  // namespace kvtc::engine
