// Container assembly from a header template and DEFLATE results, one code for the host and the GPU
// (KVTC_HD), so that a host test checks the logic the device kernel (cuda/container_assembly.cuh) runs.
//
// The host plans everything that does not depend on compressed sizes and serialises it with
// serialize_container_header: the *template*, whose chunk entries (docs/FORMAT.md section 4, 40 bytes
// each, the table ending 4 bytes before the header's end) carry kind, stream, token and item ranges,
// the aligned layout and its raw_bytes, with offset, stored_bytes and crc32 zero, and whose CRC is not
// yet valid. After DEFLATE, per chunk in table order: choose the stored stream (a codes chunk keeps its
// dense alternative, and then layout 1 and the dense raw_bytes, by GpuEncoder's rule: the aligned
// stream is larger than the dense layout and the dense stream strictly smaller than the aligned one),
// write offset (prefix sum of stored sizes), stored_bytes and crc32; then the header CRC-32 (zlib's)
// over [0, header_size - 4). The payload is the chosen streams back to back.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/huffman_deflate.hpp"  // kEncodeOk, crc32_table_entry
#include "format/container_layout.hpp"
#include "format/hd.hpp"               // KVTC_HD

namespace kvtc::cuda {

// Sequence statuses in device memory.
enum AssemblyStatus : uint32_t {
  kAssemblyOk = 0,
  kAssemblyDeflateFailed = 1,  // a DEFLATE job failed (internal error)
  kAssemblyOverflow = 2,       // the container exceeds its capacity (internal error: capacity is the bound)
  kAssemblyBadTemplate = 3,    // the template's table does not fit its header
};

// One chunk of a sequence's table.
struct AssemblyChunk {
  const uint8_t* stored = nullptr;        // its DEFLATE stream (aligned layout for codes chunks)
  const uint8_t* dense_stored = nullptr;  // codes: the dense layout's stream, or null when none was made
  uint32_t dense_raw_bytes = 0;           // codes: size of the dense layout
  uint32_t dense_index = 0;               // index of the dense job's results
};

// DEFLATE results, three arrays indexed by job (cuda/deflate_encode.cuh).
struct DeflateResults {
  const uint32_t* bytes = nullptr;
  const uint32_t* crc = nullptr;
  const uint32_t* status = nullptr;
};

// One stored stream to copy into the payload.
struct AssemblyCopy {
  const uint8_t* src = nullptr;
  uint64_t dst_offset = 0;  // from the start of the container
  uint32_t n_bytes = 0;
};

// zlib's crc32(0, data, n) with a 256-entry table of crc32_table_entry (cuda/huffman_deflate.hpp).
KVTC_HD inline uint32_t crc32_with_table(const uint32_t* table, const uint8_t* data, uint64_t n) {
  return crc32_raw_update(table, 0xFFFFFFFFu, data, n) ^ 0xFFFFFFFFu;
}

// Position of the first chunk entry in a template of header_size bytes with n_chunks entries;
// false when they do not fit.
KVTC_HD inline bool chunk_table_pos(uint64_t header_size, uint32_t n_chunks, uint64_t* pos) {
  const uint64_t table = uint64_t(n_chunks) * kChunkEntryBytes + 4;
  if (header_size < kPreambleBytes + table) return false;
  *pos = header_size - table;
  return true;
}

// What chunk i of a sequence stores: its primary stream, or the dense one where that was made and is
// smaller (GpuEncoder's rule). Returns kAssemblyOk, or kAssemblyDeflateFailed for a failed job.
struct ChunkChoice {
  const uint8_t* src = nullptr;
  uint32_t stored_bytes = 0, crc = 0;
  bool dense = false;
};
KVTC_HD inline uint32_t choose_chunk(const AssemblyChunk& c, uint32_t primary_job, DeflateResults primary,
                                     DeflateResults dense, ChunkChoice* out) {
  if (primary.status[primary_job] != kEncodeOk) return kAssemblyDeflateFailed;
  *out = ChunkChoice{c.stored, primary.bytes[primary_job], primary.crc[primary_job], false};
  if (c.dense_stored != nullptr && out->stored_bytes > c.dense_raw_bytes) {  // the dense stream was made
    const uint32_t d = c.dense_index;
    if (dense.status[d] != kEncodeOk) return kAssemblyDeflateFailed;
    if (dense.bytes[d] < out->stored_bytes) *out = ChunkChoice{c.dense_stored, dense.bytes[d], dense.crc[d], true};
  }
  return kAssemblyOk;
}

// Writes chunk i's entry (the table starts at table_pos in header) at payload offset `offset`, and its
// copy (header_size: where the payload starts).
KVTC_HD inline void write_chunk_entry(uint8_t* header, uint64_t header_size, uint64_t table_pos, uint32_t i,
                                      const AssemblyChunk& c, const ChunkChoice& ch, uint64_t offset,
                                      AssemblyCopy* copies) {
  uint8_t* e = header + table_pos + uint64_t(i) * kChunkEntryBytes;
  if (ch.dense) {
    e[chunk_entry::kLayout] = uint8_t(CodesLayout::kDense);
    put_le32(e + chunk_entry::kRawBytes, c.dense_raw_bytes);
  }
  put_le64(e + chunk_entry::kOffset, offset);
  put_le32(e + chunk_entry::kStoredBytes, ch.stored_bytes);
  put_le32(e + chunk_entry::kCrc32, ch.crc);
  copies[i].src = ch.src;
  copies[i].dst_offset = header_size + offset;
  copies[i].n_bytes = ch.stored_bytes;
}

// Fills the chunk entries of `header` (a template copy, header_size bytes) for chunks[0, n_chunks)
// whose results are primary[first_job + i] and dense[chunks[i].dense_index], writes copies[i] and the
// total container size; returns an AssemblyStatus. Does not write the header CRC. The serial form of
// what assemble_kernel does with a block's threads (the host test's oracle).
KVTC_HD inline uint32_t patch_chunk_table(uint8_t* header, uint64_t header_size, const AssemblyChunk* chunks,
                                          uint32_t n_chunks, uint32_t first_job, DeflateResults primary,
                                          DeflateResults dense, AssemblyCopy* copies, uint64_t* total_bytes) {
  uint64_t pos = 0;
  *total_bytes = 0;
  if (!chunk_table_pos(header_size, n_chunks, &pos)) return kAssemblyBadTemplate;
  uint64_t offset = 0;
  for (uint32_t i = 0; i < n_chunks; ++i) {
    ChunkChoice ch;
    const uint32_t st = choose_chunk(chunks[i], first_job + i, primary, dense, &ch);
    if (st != kAssemblyOk) return st;
    write_chunk_entry(header, header_size, pos, i, chunks[i], ch, offset, copies);
    offset += ch.stored_bytes;
  }
  *total_bytes = header_size + offset;
  return kAssemblyOk;
}

}  // namespace kvtc::cuda
