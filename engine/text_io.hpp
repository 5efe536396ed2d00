// Reading calibration and evaluation text: plain .txt or xz-compressed .txt.xz (liblzma), and the
// corpus convention of shared/corpus/MANIFEST.md: documents joined by a line holding the single byte
// 0x1E ("\n\x1e\n"), one "\n" after the last document.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc::engine {

// The whole file; names ending in ".xz" are decompressed. The text is returned as bytes (no UTF-8
// check here; the tokenizer checks).
Result<std::string> read_text_file(const std::string& path);

// Documents of a corpus text: one trailing "\n" removed, then split at "\n\x1e\n". A text without
// separators is one document. Views point into `text`.
std::vector<std::string_view> split_documents(std::string_view text);

}  // namespace kvtc::engine
