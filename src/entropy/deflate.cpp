#include "entropy/deflate.hpp"

#include <libdeflate.h>

#include <memory>

namespace kvtc {

namespace {

struct CompressorCache {
  int level = -1;
  libdeflate_compressor* c = nullptr;
  ~CompressorCache() {
    if (c) libdeflate_free_compressor(c);
  }
};

struct DecompressorHolder {
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  ~DecompressorHolder() {
    if (d) libdeflate_free_decompressor(d);
  }
};

}  // namespace

Status deflate_raw(const uint8_t* raw, size_t raw_bytes, int level, std::vector<uint8_t>& out) {
  if (level < 0 || level > 12) return invalid_argument("deflate level must be 0..12");
  thread_local CompressorCache cache;
  if (cache.level != level) {
    if (cache.c) libdeflate_free_compressor(cache.c);
    cache.c = libdeflate_alloc_compressor(level);
    cache.level = cache.c ? level : -1;
    if (!cache.c) return Status(StatusCode::kOutOfMemory, "cannot allocate a DEFLATE compressor");
  }
  out.resize(libdeflate_deflate_compress_bound(cache.c, raw_bytes));
  const size_t n = libdeflate_deflate_compress(cache.c, raw, raw_bytes, out.data(), out.size());
  if (n == 0) return internal_error("DEFLATE output exceeded its bound");
  out.resize(n);
  return Status::ok();
}

Status inflate_raw(const uint8_t* stored, size_t stored_bytes, uint8_t* raw, size_t raw_bytes) {
  thread_local DecompressorHolder holder;
  if (!holder.d) return Status(StatusCode::kOutOfMemory, "cannot allocate a DEFLATE decompressor");
  size_t in_used = 0, out_got = 0;
  const auto r = libdeflate_deflate_decompress_ex(holder.d, stored, stored_bytes, raw, raw_bytes, &in_used, &out_got);
  if (r == LIBDEFLATE_INSUFFICIENT_SPACE) return corrupt("chunk inflates to more than its recorded size");
  if (r != LIBDEFLATE_SUCCESS) return corrupt("chunk is not a valid DEFLATE stream");
  if (out_got != raw_bytes) return corrupt("chunk inflates to fewer bytes than recorded");
  if (in_used != stored_bytes) return corrupt("chunk has bytes after its DEFLATE stream");
  return Status::ok();
}

}  // namespace kvtc
