// The device container assembly's logic (cuda/container_assembly.hpp), run on the host: a template
// (serialize_container_header with offsets, stored sizes and CRCs 0) patched with DEFLATE results must
// give exactly serialize_container_header of the filled table plus the chunks back to back, including
// the dense-or-aligned choice of codes chunks (GpuEncoder's rule). Runs without CUDA.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "cuda/container_assembly.hpp"
#include "format/container.hpp"

namespace kvtc {
namespace {

using namespace kvtc::cuda;

TEST(ContainerAssemblyHost, TemplatePlusResultsIsTheSerializedContainer) {
  std::mt19937 rng(7);
  ContainerHeader h;
  h.shape.n_layers = 2;
  h.shape.n_kv_heads = 2;
  h.shape.head_dim = 8;
  h.n_tokens = 40;
  h.n_head_exact = 4;
  h.n_tail_exact = 4;
  h.calibration_fingerprint = 0x1234;
  h.target_ratio = 8;
  h.metadata = {{"a", "b"}};
  h.streams[0].basis_rank = h.streams[1].basis_rank = 4;
  for (int i = 0; i < 9; ++i) {
    ChunkEntry e;
    e.kind = i % 3 == 0 ? ChunkKind::kCodes : (i % 3 == 1 ? ChunkKind::kSide : ChunkKind::kExact);
    e.stream = uint8_t(i % 2);
    e.token_begin = uint32_t(i);
    e.n_tokens = 1 + i;
    e.raw_bytes = 100 + 10 * uint32_t(i);
    h.chunks.push_back(e);
  }
  const std::vector<uint8_t> tmpl = serialize_container_header(h);  // entries: offset, stored, crc 0
  const uint32_t n = uint32_t(h.chunks.size());
  // Results: primary streams of random sizes; codes chunks have dense alternatives, some chosen.
  std::vector<std::vector<uint8_t>> prim(n), dens(n);
  std::vector<uint32_t> pb(n), pc(n), ps(n, kEncodeOk), db(n), dc(n), ds(n, kEncodeOk);
  std::vector<AssemblyChunk> chunks(n);
  for (uint32_t i = 0; i < n; ++i) {
    prim[i].resize(20 + rng() % 80);
    for (auto& b : prim[i]) b = uint8_t(rng());
    pb[i] = uint32_t(prim[i].size());
    pc[i] = rng();
    chunks[i].stored = prim[i].data();
    if (h.chunks[i].kind == ChunkKind::kCodes) {
      dens[i].resize(i == 3 ? pb[i] - 1 : (i == 6 ? pb[i] + 5 : 10));  // 0: dense; 3: dense; 6: aligned
      for (auto& b : dens[i]) b = uint8_t(rng());
      db[i] = uint32_t(dens[i].size());
      dc[i] = rng();
      chunks[i].dense_stored = dens[i].data();
      chunks[i].dense_raw_bytes = i == 6 ? 1000 : 15;  // 6: not retried (stored <= dense raw size)
      chunks[i].dense_index = i;
    }
  }
  std::vector<uint8_t> out(tmpl);
  std::vector<AssemblyCopy> copies(n);
  uint64_t total = 0;
  ASSERT_EQ(patch_chunk_table(out.data(), out.size(), chunks.data(), n, 0, {pb.data(), pc.data(), ps.data()},
                              {db.data(), dc.data(), ds.data()}, copies.data(), &total),
            uint32_t(kAssemblyOk));
  uint32_t table[256];
  for (uint32_t i = 0; i < 256; ++i) table[i] = crc32_table_entry(i);
  put_le32(out.data() + out.size() - 4, crc32_with_table(table, out.data(), out.size() - 4));
  out.resize(total);
  for (const AssemblyCopy& c : copies) std::memcpy(out.data() + c.dst_offset, c.src, c.n_bytes);

  // Expected: the host assembly.
  std::vector<uint8_t> payload;
  for (uint32_t i = 0; i < n; ++i) {
    ChunkEntry& e = h.chunks[i];
    const bool dense = chunks[i].dense_stored != nullptr && pb[i] > chunks[i].dense_raw_bytes && db[i] < pb[i];
    EXPECT_EQ(dense, i == 0 || i == 3) << i;
    const std::vector<uint8_t>& src = dense ? dens[i] : prim[i];
    e.offset = payload.size();
    e.stored_bytes = uint32_t(src.size());
    e.crc32 = dense ? dc[i] : pc[i];
    if (dense) {
      e.layout = CodesLayout::kDense;
      e.raw_bytes = chunks[i].dense_raw_bytes;
    }
    payload.insert(payload.end(), src.begin(), src.end());
  }
  std::vector<uint8_t> expected = serialize_container_header(h);
  ASSERT_EQ(expected.size(), tmpl.size());
  expected.insert(expected.end(), payload.begin(), payload.end());
  EXPECT_EQ(out, expected);
  EXPECT_EQ(crc32_with_table(table, expected.data(), 9), crc32_of(expected.data(), 9));

  // A failed DEFLATE is reported; a table that does not fit the header too.
  ps[4] = 3;
  EXPECT_EQ(patch_chunk_table(out.data(), tmpl.size(), chunks.data(), n, 0, {pb.data(), pc.data(), ps.data()},
                              {db.data(), dc.data(), ds.data()}, copies.data(), &total),
            uint32_t(kAssemblyDeflateFailed));
  EXPECT_EQ(patch_chunk_table(out.data(), 100, chunks.data(), n, 0, {pb.data(), pc.data(), ps.data()},
                              {db.data(), dc.data(), ds.data()}, copies.data(), &total),
            uint32_t(kAssemblyBadTemplate));
}

}  // namespace
}  // namespace kvtc
