#include "engine/text_io.hpp"

#include <cstdint>

#include <lzma.h>

#include "util/file_io.hpp"
#include "util/status_macros.hpp"

namespace kvtc::engine {

namespace {

Result<std::string> xz_decompress(const std::vector<uint8_t>& in, const std::string& path) {
  lzma_stream strm = LZMA_STREAM_INIT;
  // No memory limit beyond what the file asks for; LZMA_CONCATENATED accepts multi-stream files as xz(1).
  if (lzma_stream_decoder(&strm, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
    return internal_error(path + ": lzma_stream_decoder failed");
  std::string out;
  out.resize(in.size() * 4 + 4096);
  strm.next_in = in.data();
  strm.avail_in = in.size();
  size_t produced = 0;
  lzma_ret ret = LZMA_OK;
  while (true) {
    if (produced == out.size()) out.resize(out.size() * 2);
    strm.next_out = reinterpret_cast<uint8_t*>(out.data()) + produced;
    strm.avail_out = out.size() - produced;
    ret = lzma_code(&strm, strm.avail_in == 0 ? LZMA_FINISH : LZMA_RUN);
    produced = out.size() - strm.avail_out;
    if (ret == LZMA_STREAM_END) break;
    if (ret != LZMA_OK) break;
  }
  lzma_end(&strm);
  if (ret != LZMA_STREAM_END) {
    if (ret == LZMA_MEM_ERROR) return Status(StatusCode::kOutOfMemory, path + ": out of memory decompressing");
    return corrupt(path + ": not a valid .xz file (lzma error " + std::to_string(int(ret)) + ")");
  }
  out.resize(produced);
  return out;
}

}  // namespace

Result<std::string> read_text_file(const std::string& path) {
  KVTC_ASSIGN_OR_RETURN(auto bytes, read_file(path));
  if (path.size() >= 3 && path.compare(path.size() - 3, 3, ".xz") == 0) return xz_decompress(bytes, path);
  return std::string(bytes.begin(), bytes.end());
}

std::vector<std::string_view> split_documents(std::string_view text) {
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  std::vector<std::string_view> docs;
  constexpr std::string_view kSep = "\n\x1e\n";
  size_t pos = 0;
  while (true) {
    const size_t e = text.find(kSep, pos);
    if (e == std::string_view::npos) {
      docs.push_back(text.substr(pos));
      break;
    }
    docs.push_back(text.substr(pos, e - pos));
    pos = e + kSep.size();
  }
  return docs;
}

}  // namespace kvtc::engine
