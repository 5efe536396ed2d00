// Token sequences cut from text files, in the form the reference model was trained and its caches made
// (shared/kvcache/make_caches.py): every document becomes tokenizer(doc) with the post-processor's
// special tokens (<|bos|> for kvtc-ref-26m) followed by the model's eos token; documents follow each
// other in one stream, which is cut into sequences of the length asked for.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.hpp"
#include "kvtc/status.hpp"

namespace kvtc::engine {

class TokenStream {
 public:
  // `files`: .txt or .txt.xz, documents separated as in shared/corpus (text_io.hpp). eos_id < 0: no
  // eos after documents. The first skip_docs documents (over all files) are skipped.
  TokenStream(const Tokenizer& tokenizer, std::vector<std::string> files, int32_t eos_id, int64_t skip_docs = 0);

  // The next n tokens of the stream; fewer at its end, none once it is exhausted.
  Result<std::vector<int32_t>> next(int64_t n);
  // Share of the input documents consumed so far, in [0, 1].
  double progress() const;

 private:
  Status load_next_file();
  const Tokenizer* tok_;
  std::vector<std::string> files_;
  int32_t eos_;
  int64_t skip_docs_;
  size_t file_index_ = 0;
  std::string text_;
  std::vector<std::string_view> docs_;
  size_t doc_index_ = 0;
  std::vector<int32_t> pending_;
  size_t pending_pos_ = 0;
};

// One TokenStream per file, taking turns: each next() cuts its sequence from the next file in the
// rotation, so that every file is represented however early the caller stops (calibration text of
// several domains, say). A file leaves the rotation when its text is used up.
class InterleavedStreams {
 public:
  InterleavedStreams(const Tokenizer& tokenizer, const std::vector<std::string>& files, int32_t eos_id);

  // The next n tokens of the next file in turn: fewer at that file's end, none once every file is
  // used up. *file, when given, receives the index of the file they came from.
  Result<std::vector<int32_t>> next(int64_t n, size_t* file = nullptr);
  // Mean share of the files' documents consumed, in [0, 1].
  double progress() const;

 private:
  std::vector<std::unique_ptr<TokenStream>> streams_;
  std::vector<bool> used_up_;
  size_t turn_ = 0;
};

}  // namespace kvtc::engine
