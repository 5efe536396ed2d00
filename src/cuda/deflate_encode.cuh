// Batched raw DEFLATE (RFC 1951) encoding on the GPU: Huffman-only dynamic blocks (or stored blocks
// where those are smaller), one thread block per stream, many streams per launch.
//
// The output is byte-identical to the host mirror cuda/huffman_deflate.hpp (deflate_encode_host),
// which is the test oracle; every stream inflates with zlib, libdeflate and the GPU inflate kernel
// (entropy/inflate.cuh). Results go to device memory: no host synchronisation, so a caller can chain
// the sizes into a compaction or a later launch on the same stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/huffman_deflate.hpp"

namespace kvtc::cuda {

// One stream to write. src and dst are device pointers of any alignment. dst has room for
// dst_capacity bytes; deflate_encode_bound(src_bytes) is always enough. src_bytes <= 2^28.
struct DeflateEncodeJob {
  const uint8_t* src;
  uint8_t* dst;
  uint32_t src_bytes;
  uint32_t dst_capacity;
};

// Encodes jobs_dev[0, n_jobs) (a device array). Per job i, in device memory:
//   out_bytes_dev[i]: the stream's size (0 unless status is kEncodeOk);
//   out_crc_dev[i]:   zlib CRC-32 of dst[0, out_bytes) (0 unless kEncodeOk);
//   status_dev[i]:    DeflateEncodeStatus: kEncodeOk, kEncodeOverflow (dst_capacity too small:
//                     nothing written), kEncodeInputTooLarge, kEncodeInternal.
// dst bytes past out_bytes are never written. Asynchronous on `stream`; returns the launch error.
cudaError_t launch_deflate_encode(const DeflateEncodeJob* jobs_dev, int n_jobs, uint32_t* out_bytes_dev,
                                  uint32_t* out_crc_dev, uint32_t* status_dev, cudaStream_t stream);

}  // namespace kvtc::cuda
