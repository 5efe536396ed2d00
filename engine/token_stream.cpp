#include "engine/token_stream.hpp"

#include "engine/text_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

TokenStream::TokenStream(const Tokenizer& tokenizer, std::vector<std::string> files, int32_t eos_id, int64_t skip_docs)
    : tok_(&tokenizer), files_(std::move(files)), eos_(eos_id), skip_docs_(skip_docs) {}

Status TokenStream::load_next_file() {
  KVTC_ASSIGN_OR_RETURN(text_, read_text_file(files_[file_index_]));
  docs_ = split_documents(text_);
  doc_index_ = 0;
  ++file_index_;
  return Status::ok();
}

Result<std::vector<int32_t>> TokenStream::next(int64_t n) {
  std::vector<int32_t> out;
  while (int64_t(out.size()) < n) {
    if (pending_pos_ < pending_.size()) {
      const size_t take = std::min(pending_.size() - pending_pos_, size_t(n) - out.size());
      out.insert(out.end(), pending_.begin() + pending_pos_, pending_.begin() + pending_pos_ + take);
      pending_pos_ += take;
      continue;
    }
    if (doc_index_ >= docs_.size()) {
      if (file_index_ >= files_.size()) break;
      KVTC_RETURN_IF_ERROR(load_next_file());
      continue;
    }
    const std::string_view doc = docs_[doc_index_++];
    if (skip_docs_ > 0) {
      --skip_docs_;
      continue;
    }
    auto ids = tok_->encode(doc, /*add_special_tokens=*/true);
    if (!ids.is_ok())
      return ids.status().with_context(files_[file_index_ - 1] + " document " + std::to_string(doc_index_ - 1));
    pending_ = std::move(ids).value();
    if (eos_ >= 0) pending_.push_back(eos_);
    pending_pos_ = 0;
  }
  return out;
}

double TokenStream::progress() const {
  if (files_.empty()) return 1.0;
  const double in_file = docs_.empty() ? 0.0 : double(doc_index_) / double(docs_.size());
  const double done = file_index_ == 0 ? 0.0 : double(file_index_ - 1) + in_file;
  return std::min(1.0, done / double(files_.size()));
}

InterleavedStreams::InterleavedStreams(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                                       int32_t eos_id)
    : used_up_(files.size(), false) {
  for (const auto& f : files) streams_.push_back(std::make_unique<TokenStream>(tokenizer, std::vector{f}, eos_id));
}

Result<std::vector<int32_t>> InterleavedStreams::next(int64_t n, size_t* file) {
  for (size_t tried = 0; tried < streams_.size(); ++tried) {
    const size_t i = turn_++ % streams_.size();
    if (used_up_[i]) continue;
    KVTC_ASSIGN_OR_RETURN(std::vector<int32_t> out, streams_[i]->next(n));
    if (int64_t(out.size()) < n) used_up_[i] = true;
    if (out.empty()) continue;
    if (file != nullptr) *file = i;
    return out;
  }
  return std::vector<int32_t>{};
}

double InterleavedStreams::progress() const {
  if (streams_.empty()) return 1.0;
  double sum = 0;
  for (size_t i = 0; i < streams_.size(); ++i) sum += used_up_[i] ? 1.0 : streams_[i]->progress();
  return sum / double(streams_.size());
}

}  // namespace kvtc::engine
