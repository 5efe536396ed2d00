// The tokenizer of a GGUF model, from its `tokenizer.ggml.*` metadata.
//
// GGUF keeps what llama.cpp's converter took from the Hugging Face tokenizer: the token strings
// (`tokens`, in the byte-level alphabet), their types (`token_type`: 1 normal, 3 control, 4 user
// defined, ...), the BPE merges ("a b" strings, by rank), the name of the pre-tokenizer (`pre`), the
// special token ids and whether a BOS token is added. tokenizer_json_from_gguf rebuilds the
// tokenizer.json those came from, and Tokenizer::parse reads it, so GGUF and Hugging Face models share
// one BPE implementation:
//   model "gpt2" (byte-level BPE) only; "llama" (SentencePiece) and others give kUnsupported;
//   control tokens become special added tokens, user-defined tokens non-special added tokens;
//   pre-tokenizers by name, as the original tokenizer.json files define them:
//     gpt-2                          ByteLevel with the GPT-2 regex
//     smollm, starcoder, refact      Digits(individual) = Split(\p{N}, Isolated), then ByteLevel
//     qwen2, deepseek-r1-qwen        Split(Qwen2 regex), ByteLevel without regex
//     llama-bpe (Llama 3)            Split(Llama 3 regex), ByteLevel without regex, ignore_merges
//   others give kUnsupported naming them, so a tokenizer that loads is one whose ids can be trusted;
//   add_bos_token / add_eos_token: a TemplateProcessing post-processor around sequence A.
#pragma once

#include <string>

#include "engine/gguf.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

// The tokenizer.json text equivalent to the tokenizer stored in `f`.
Result<std::string> tokenizer_json_from_gguf(const GgufFile& f);

}  // namespace kvtc::engine
