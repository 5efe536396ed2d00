// Batched raw DEFLATE (RFC 1951) decoding on the GPU: one warp per stream, many streams per launch.
// Every read of the input is bounds-checked: a malformed stream ends with a status code in device
// memory, never with a fault or an out-of-bounds write.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtc::cuda {

// One stream to inflate. src and dst are device pointers; dst has room for exactly dst_bytes.
struct InflateJob {
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
  uint32_t src_bytes = 0;
  uint32_t dst_bytes = 0;  // the stream must inflate to exactly this many bytes
  uint32_t crc32 = 0;      // CRC-32 of the src bytes (checked when verify_crc)
  uint32_t pad = 0;
};

// Per-job results written to status_dev[i].
enum InflateStatus : uint32_t {
  kInflateOk = 0,
  kInflateBadBlockType = 1,   // block type 3, or a stored block whose LEN and NLEN disagree
  kInflateBadCodeSet = 2,     // oversubscribed code lengths, bad repeat, no end-of-block code
  kInflateBadSymbol = 3,      // a code not in the table, or length / distance symbol out of range
  kInflateBadDistance = 4,    // a back-reference before the start of the output
  kInflateOutputOverrun = 5,  // the stream produces more than dst_bytes
  kInflateOutputShort = 6,    // the stream ends before dst_bytes
  kInflateInputOverrun = 7,   // the stream needs more bits than src_bytes holds
  kInflateTrailingInput = 8,  // bytes after the final block
  kInflateBadChecksum = 9,    // CRC-32 of src differs from crc32
};

const char* inflate_status_name(uint32_t status);

// Inflates jobs_dev[0 .. n_jobs) (device array). Asynchronous on `stream`; no host synchronisation.
cudaError_t launch_inflate(const InflateJob* jobs_dev, int n_jobs, bool verify_crc, uint32_t* status_dev,
                           cudaStream_t stream);

}  // namespace kvtc::cuda
