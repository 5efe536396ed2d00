// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json, giving the same ids as the
// `tokenizers` library for the pipelines it supports:
//   added tokens   matched first on the raw text, leftmost-longest (lstrip / rstrip honoured);
//   normalizer     null (NFC is accepted and treated as identity: exact for text already in NFC);
//   pre_tokenizer  ByteLevel (GPT-2 regex when use_regex, add_prefix_space), Split (regex or string
//                  pattern, all five behaviours, invert), or a Sequence of these;
//   model          BPE on the byte-to-unicode alphabet, merges applied by rank (ignore_merges honoured);
//   post_processor TemplateProcessing ("single" template: special tokens around sequence A),
//                  ByteLevel (no effect on ids), or a Sequence of these;
//   decoder        ByteLevel: token strings back to bytes, then UTF-8 with invalid sequences replaced by
//                  U+FFFD as Rust's from_utf8_lossy does.
// Regexes run under PCRE2 in UTF + UCP mode (\p{L}, \p{N}, \s from PCRE2's own Unicode tables), JIT
// compiled when the library supports it. Anything else in the file gives kUnsupported at load time, so
// a tokenizer that loads is one whose ids can be trusted.
//
// Thread safety: a loaded Tokenizer is immutable; encode and decode may run from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc::engine {

class Tokenizer {
 public:
  // Reads <path> (a tokenizer.json file).
  static Result<Tokenizer> load(const std::string& path);
  // The tokenizer of a model: <dir>/tokenizer.json for a Hugging Face folder, the tokenizer.ggml.*
  // metadata for a .gguf file (gguf_tokenizer.hpp).
  static Result<Tokenizer> load_for_model(const std::string& model_path);
  static Result<Tokenizer> parse(const std::string& json_text);

  // Token ids of UTF-8 `text` (invalid UTF-8: kInvalidArgument). add_special_tokens applies the
  // post-processor's single template (for kvtc-ref-26m: <|bos|> first), as tokenizers'
  // encode(text, add_special_tokens=True) does.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_special_tokens) const;
  // Text of `ids`; ids out of range are skipped. skip_special_tokens drops special added tokens.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  // The raw bytes one token stands for (added tokens: their content).
  std::string token_bytes(int32_t id) const;

  int32_t vocab_size() const;            // largest id + 1
  int32_t token_id(std::string_view token) const;  // vocab or added token by its string; -1 if absent
  bool is_special(int32_t id) const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Replaces invalid UTF-8 sequences of `bytes` by U+FFFD, one per maximal invalid subsequence (the rule
// of Rust's String::from_utf8_lossy and the WHATWG decoder).
std::string utf8_lossy(std::string_view bytes);
// True when `text` is well-formed UTF-8 (no surrogates, no overlongs, <= U+10FFFF).
bool is_valid_utf8(std::string_view text);

}  // namespace kvtc::engine
