// CRC-32 (zlib's polynomial) of a device buffer by one warp: the device half of util/crc32.hpp, for
// the GPU decoders that check chunk checksums (entropy/inflate.cu, cuda/ecsq_decode.cu): each lane
// takes one contiguous segment, and the segments' CRCs are combined with the GF(2) shift operator as
// zlib's crc32_combine does.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::cuda {

// The byte table, filled by the warp's lanes into shared memory (256 entries), then a warp barrier.
__device__ inline void fill_crc32_table(uint32_t* table) {
  for (int i = threadIdx.x & 31; i < 256; i += 32) {
    uint32_t c = uint32_t(i);
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  __syncwarp();
}

// CRC-32 arithmetic modulo the polynomial (zlib's multmodp / x2nmodp): a * b mod p, reflected.
__device__ inline uint32_t mult_mod_p(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, prod = 0;
  for (;;) {
    if (a & m) {
      prod ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ 0xedb88320u : b >> 1;
  }
  return prod;
}
// x^(8 * n_bytes) mod p: the operator that shifts a CRC over n_bytes zero bytes.
__device__ inline uint32_t shift_op(uint32_t n_bytes) {
  uint32_t p = 1u << 31, sq = 1u << 30;  // x^0, x^1
  uint64_t n = uint64_t(n_bytes) * 8;
  while (n) {
    if (n & 1) p = mult_mod_p(sq, p);
    sq = mult_mod_p(sq, sq);
    n >>= 1;
  }
  return p;
}

// CRC-32 of src, the warp's lanes each taking one contiguous segment; all lanes get the result.
__device__ inline uint32_t warp_crc32(const uint8_t* src, uint32_t n, const uint32_t* table) {
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t seg = (n + 31) / 32;
  const uint32_t b = min(n, lane * seg), e = min(n, b + seg);
  uint32_t crc = 0xffffffffu;
  for (uint32_t i = b; i < e; ++i) crc = table[(crc ^ __ldg(src + i)) & 0xff] ^ (crc >> 8);
  crc ^= 0xffffffffu;
  // crc(A || B) = shift(crc(A), |B|) ^ crc(B); segments are seg bytes except the last ones.
  const uint32_t op = shift_op(seg);
  uint32_t total = __shfl_sync(0xffffffffu, crc, 0);
  for (uint32_t l = 1; l < 32; ++l) {
    const uint32_t c = __shfl_sync(0xffffffffu, crc, l);
    const uint32_t len = min(n, l * seg + seg) - min(n, l * seg);
    if (len == 0) break;
    total = mult_mod_p(len == seg ? op : shift_op(len), total) ^ c;
  }
  return total;
}

}  // namespace kvtc::cuda
