// Serving restore on the GPU from kvtc's block store: a prefix's compressed blocks wait in a TieredStore
// whose host tier keeps its values in page-locked memory (HostTierOptions::memory = allocate_pinned),
// and are brought back into a vLLM-style paged KV cache on the device, layer by layer. Mistral NeMo
// 12B's shape (40 layers x 8 KV heads x 128) by default, synthetic caches and a 20x allocation
// (cuda_workload.hpp); compare with bench_cuda_prefill.py's prefill of the same shape in the same run.
//
//   kvtc_bench_store_gpu [tokens=8192] [block sizes, 0 = the whole prefix in one container: 0,256,64]
//                        [repetitions=5]
//
// Per case (block size x host memory: pinned or pageable), timed from the first store lookup to the
// last layer's CUDA event:
//   lookup   TieredStore::get_shared of every block (host hits: no copy out of the store)
//   decode   BatchDecoder::decode of all blocks in one batch: parse, upload of the payloads straight
//            from the store's memory (DMA when pinned), inflate, dequantise (device statuses deferred)
//   restore  restore_layer_paged of every block, layer 0 first across all blocks, into
//            [num_pages][2][16][H][D] bf16 layer caches through a shuffled page table; an event per layer
//   layer 0, all   when the first and the last layer are complete (events, from the first lookup)
// A prefix of whole blocks: in block mode a block's tokens are all compressed (no exact window; only
// the block at position 0 keeps the 4 sinks), at their true RoPE positions. The whole-prefix case is
// bench_cuda's container (sinks and the newest 128 tokens exact). One JSON line per case, then a table.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_workload.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "kvtc/store.hpp"

namespace kvtc {
namespace {

using namespace bench;

constexpr int kPageTokens = 16;  // vLLM's default block size on the GPU

// Block containers of tokens [a, a + block) (block 0 = the whole prefix in one container).
std::vector<std::vector<uint8_t>> encode_blocks(const Calibration& cal, const KVCache& cache, int64_t block,
                                                double* ratio_file, double* encode_s) {
  const auto t0 = Clock::now();
  std::vector<std::vector<uint8_t>> out;
  EncodeOptions eo;
  eo.target_ratio = 20.0;
  eo.measure_error = false;
  const int64_t T = cache.n_tokens;
  double raw = 0, file = 0;
  if (block == 0) {
    auto e = encode(cal, cache, eo);
    OK(e.status());
    raw = double(e->report.raw_bytes);
    out.push_back(std::move(e->bytes));
  } else {
    const CacheView whole = CacheView::of(cache);
    for (int64_t a = 0; a < T; a += block) {
      CacheView v = whole;
      v.n_tokens = std::min(block, T - a);
      v.position_offset = a;
      for (size_t l = 0; l < v.k.size(); ++l) {
        v.k[l].data = static_cast<const float*>(whole.k[l].data) + a * whole.k[l].token_stride;
        v.v[l].data = static_cast<const float*>(whole.v[l].data) + a * whole.v[l].token_stride;
      }
      eo.exact_head_tokens = a == 0 ? -1 : 0;
      eo.exact_tail_tokens = 0;
      auto e = encode(cal, v, eo);
      OK(e.status());
      raw += double(e->report.raw_bytes);
      out.push_back(std::move(e->bytes));
    }
  }
  for (const auto& b : out) file += double(b.size());
  *ratio_file = raw / file;
  *encode_s = since(t0);
  return out;
}

struct Case {
  std::string name;
  int64_t block_tokens = 0;
  bool pinned = false;
  int n_blocks = 0;
  double ratio_file = 0, file_bytes = 0;
  double lookup_ms = 0, decode_ms = 0, first_layer_ms = 0, all_layers_ms = 0, total_ms = 0;
};

Case run_case(const cuda::DeviceCalibration& dcal, const std::vector<std::vector<uint8_t>>& blocks,
              const ModelShape& shape, int64_t T, int64_t block, bool pinned, int reps, double ratio_file) {
  Case c;
  c.block_tokens = block;
  c.pinned = pinned;
  c.n_blocks = int(blocks.size());
  c.ratio_file = ratio_file;
  c.name = (block == 0 ? std::string("whole prefix") : "blocks of " + std::to_string(block)) +
           (pinned ? ", pinned" : ", pageable");
  // The store: host memory only (a disk or Redis tier below would serve misses; all of these hit).
  store::HostTierOptions ho;
  ho.capacity_bytes = uint64_t(4) << 30;
  if (pinned) ho.memory = {cuda::allocate_pinned, cuda::free_pinned};
  auto host = store::HostTier::create(ho);
  OK(host.status());
  auto st = store::TieredStore::create(std::move(host).value(), nullptr);
  OK(st.status());
  std::vector<std::string> keys;
  for (size_t i = 0; i < blocks.size(); ++i) {
    keys.push_back("kvtc:nemo:20:" + std::to_string(block) + ":" + std::to_string(i));
    OK((*st)->put(keys.back(), blocks[i]));
    c.file_bytes += double(blocks[i].size());
  }
  // The paged cache: pages of 16 tokens, a shuffled page table per block (as a paged allocator hands
  // them out), one layer cache per layer.
  const int L = shape.n_layers, H = shape.n_kv_heads, D = shape.head_dim;
  const int64_t n_pages = (T + kPageTokens - 1) / kPageTokens;
  const size_t page_bytes = size_t(2) * kPageTokens * H * D * 2;
  std::vector<int32_t> perm(static_cast<size_t>(n_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
  int32_t* table_dev;
  CK(cudaMalloc(&table_dev, perm.size() * sizeof(int32_t)));
  CK(cudaMemcpy(table_dev, perm.data(), perm.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  void* pages;
  CK(cudaMalloc(&pages, size_t(L) * n_pages * page_bytes));
  const int64_t block_tokens = block == 0 ? T : block;
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  std::vector<cudaEvent_t> ev(static_cast<size_t>(L));
  for (auto& e : ev) CK(cudaEventCreate(&e));
  cudaEvent_t start;
  CK(cudaEventCreate(&start));
  cuda::BatchDecoder dec;
  cuda::BatchDecodeOptions bo;
  bo.keep_fp32 = false;
  bo.defer_status = true;
  std::vector<double> lookup, decode, first, all, total;
  for (int rep = 0; rep < reps + 1; ++rep) {
    CK(cudaStreamSynchronize(stream));
    const auto t0 = Clock::now();
    CK(cudaEventRecord(start, stream));  // the stream is idle: completes at t0
    std::vector<store::SharedBytes> held;
    std::vector<cuda::ContainerView> views;
    for (const std::string& k : keys) {
      auto r = (*st)->get_shared(k);
      OK(r.status());
      if (!*r) {
        std::fprintf(stderr, "store miss: %s\n", k.c_str());
        std::exit(1);
      }
      views.emplace_back((*r)->data(), (*r)->size());
      held.push_back(std::move(*r));
    }
    const double t_lookup = since(t0);
    OK(dec.decode(dcal, views, bo, stream));
    const double t_decode = since(t0);  // host return (device statuses deferred)
    for (int l = 0; l < L; ++l) {
      void* layer_cache = static_cast<uint8_t*>(pages) + size_t(l) * n_pages * page_bytes;
      for (int b = 0; b < int(blocks.size()); ++b) {
        const int32_t* bt = table_dev + (int64_t(b) * block_tokens) / kPageTokens;
        OK(dec.restore_layer_paged(dcal, b, l, layer_cache, bt, kPageTokens, cuda::ElementType::kBF16, stream));
      }
      CK(cudaEventRecord(ev[size_t(l)], stream));
    }
    CK(cudaStreamSynchronize(stream));
    OK(dec.status());
    const double t_total = since(t0);
    if (rep == 0) continue;  // warm-up
    float ms_first, ms_all;
    CK(cudaEventElapsedTime(&ms_first, start, ev[0]));
    CK(cudaEventElapsedTime(&ms_all, start, ev[size_t(L - 1)]));
    lookup.push_back(t_lookup * 1e3);
    decode.push_back(t_decode * 1e3);
    first.push_back(ms_first);
    all.push_back(ms_all);
    total.push_back(t_total * 1e3);
  }
  c.lookup_ms = median(lookup);
  c.decode_ms = median(decode);
  c.first_layer_ms = median(first);
  c.all_layers_ms = median(all);
  c.total_ms = median(total);
  for (auto& e : ev) cudaEventDestroy(e);
  cudaEventDestroy(start);
  cudaStreamDestroy(stream);
  cudaFree(pages);
  cudaFree(table_dev);
  std::printf("{\"case\":\"%s\",\"blocks\":%d,\"ratio_file\":%.2f,\"file_MB\":%.2f,\"lookup_ms\":%.3f,"
              "\"decode_ms\":%.3f,\"first_layer_ms\":%.3f,\"all_layers_ms\":%.3f,\"total_ms\":%.3f}\n",
              c.name.c_str(), c.n_blocks, c.ratio_file, c.file_bytes * 1e-6, c.lookup_ms, c.decode_ms,
              c.first_layer_ms, c.all_layers_ms, c.total_ms);
  std::fflush(stdout);
  return c;
}

}  // namespace
}  // namespace kvtc

int main(int argc, char** argv) {
  using namespace kvtc;
  using namespace kvtc::bench;
  std::string why;
  if (!cuda::device_available(&why)) {
    std::printf("SKIPPED: %s\n", why.c_str());
    return 0;
  }
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 8192;
  std::vector<int64_t> block_sizes;
  {
    std::string list = argc > 2 ? argv[2] : "0,256,64";
    for (size_t pos = 0; pos <= list.size();) {
      const size_t comma = std::min(list.find(',', pos), list.size());
      block_sizes.push_back(std::atoll(list.substr(pos, comma - pos).c_str()));
      pos = comma + 1;
    }
  }
  const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
  for (int64_t b : block_sizes) {
    if (b < 0 || (b > 0 && b % kPageTokens != 0)) {
      std::fprintf(stderr, "block sizes are 0 (whole prefix) or multiples of %d\n", kPageTokens);
      return 2;
    }
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("{\"device\":\"%s\",\"tokens\":%lld}\n", prop.name, (long long)tokens);
  const std::vector<double> spectrum = reference_key_spectrum();
  const Workload w = make_workload("nemo 40x8x128", 40, 8, 128, tokens, &spectrum, 2);
  const Calibration cal(std::make_shared<CalibrationData>(w.cal));
  cudaStream_t s0;
  CK(cudaStreamCreate(&s0));
  cuda::DeviceCalibration::Options dopt;
  dopt.fp32 = false;
  auto dcal = cuda::DeviceCalibration::upload(cal, dopt, s0);
  OK(dcal.status());
  std::vector<Case> cases;
  for (int64_t b : block_sizes) {
    double ratio_file = 0, encode_s = 0;
    const auto blocks = encode_blocks(cal, w.cache, b, &ratio_file, &encode_s);
    std::fprintf(stderr, "%s: %zu containers, file ratio %.2f, CPU encode %.1f s\n",
                 b == 0 ? "whole" : std::to_string(b).c_str(), blocks.size(), ratio_file, encode_s);
    for (bool pinned : {true, false})
      cases.push_back(run_case(*dcal, blocks, w.cache.shape, tokens, b, pinned, reps, ratio_file));
  }
  std::printf("\n%-28s %7s %7s %9s %9s %9s %9s %9s\n", "case (ms, medians)", "blocks", "ratio", "lookup", "decode",
              "layer 0", "all", "wall");
  for (const Case& c : cases) {
    std::printf("%-28s %7d %7.2f %9.3f %9.3f %9.3f %9.3f %9.3f\n", c.name.c_str(), c.n_blocks, c.ratio_file,
                c.lookup_ms, c.decode_ms, c.first_layer_ms, c.all_layers_ms, c.total_ms);
  }
  cudaStreamDestroy(s0);
  return 0;
}
