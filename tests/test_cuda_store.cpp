// A store whose host tier keeps its values in page-locked memory (kvtc::cuda::allocate_pinned), read
// without a copy (get_shared) and decoded on the GPU straight from there: the serving path of
// bench/bench_store_gpu.cpp. The restored tensors must equal, bit for bit, those decoded from ordinary
// heap copies of the same containers, and the values must really be page-locked.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/cuda_backend.hpp"
#include "cuda_test_util.hpp"
#include "kvtc/cache.hpp"
#include "kvtc/kvtc_cuda.hpp"
#include "kvtc/store.hpp"
#include "test_util.hpp"

namespace kvtc {
namespace {

TEST(CudaStore, PinnedHostTierDecodesLikeHeapCopies) {
  SKIP_WITHOUT_DEVICE();
  ModelShape shape;
  shape.n_layers = 3;
  shape.n_kv_heads = 2;
  shape.head_dim = 64;
  const KVCache cache = testing::synthetic_cache(shape, 192, 31, DType::kBF16);
  const Calibration cal(std::make_shared<CalibrationData>(testing::calibration_8_20(cache, 96, 4, 16)));
  // Three blocks of 64 tokens at their true positions (block mode).
  std::vector<std::vector<uint8_t>> blocks;
  const CacheView whole = CacheView::of(cache);
  for (int64_t a = 0; a < cache.n_tokens; a += 64) {
    CacheView v = whole;
    v.n_tokens = 64;
    v.position_offset = a;
    for (size_t l = 0; l < v.k.size(); ++l) {
      v.k[l].data = static_cast<const float*>(whole.k[l].data) + a * whole.k[l].token_stride;
      v.v[l].data = static_cast<const float*>(whole.v[l].data) + a * whole.v[l].token_stride;
    }
    EncodeOptions eo;
    eo.target_ratio = 20;
    eo.measure_error = false;
    eo.exact_head_tokens = a == 0 ? -1 : 0;
    eo.exact_tail_tokens = 0;
    auto e = encode(cal, v, eo);
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    blocks.push_back(e->bytes);
  }
  store::HostTierOptions ho;
  ho.memory = {cuda::allocate_pinned, cuda::free_pinned};
  auto host = store::HostTier::create(ho);
  ASSERT_TRUE(host.is_ok());
  auto st = store::TieredStore::create(std::move(host).value(), nullptr);
  ASSERT_TRUE(st.is_ok());
  for (size_t i = 0; i < blocks.size(); ++i) ASSERT_TRUE((*st)->put("b" + std::to_string(i), blocks[i]).is_ok());

  std::vector<store::SharedBytes> held;
  std::vector<cuda::ContainerView> pinned_views, heap_views;
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto r = (*st)->get_shared("b" + std::to_string(i));
    ASSERT_TRUE(r.is_ok() && *r);
    ASSERT_EQ(std::vector<uint8_t>((*r)->begin(), (*r)->end()), blocks[i]);
    cudaPointerAttributes attr{};
    ASSERT_EQ(cudaPointerGetAttributes(&attr, (*r)->data()), cudaSuccess);
    EXPECT_EQ(attr.type, cudaMemoryTypeHost) << "block " << i << " is not page-locked";
    pinned_views.emplace_back((*r)->data(), (*r)->size());
    heap_views.emplace_back(blocks[i].data(), blocks[i].size());
    held.push_back(std::move(*r));
  }
  auto dcal = cuda::DeviceCalibration::upload(cal, {}, nullptr);
  ASSERT_TRUE(dcal.is_ok()) << dcal.status().to_string();
  cuda::BatchDecoder from_store, from_heap;
  ASSERT_TRUE(from_store.decode(*dcal, pinned_views, {}, nullptr).is_ok());
  ASSERT_TRUE(from_heap.decode(*dcal, heap_views, {}, nullptr).is_ok());
  for (int q = 0; q < int(blocks.size()); ++q) {
    EXPECT_EQ(from_store.n_tokens(q), 64);
    for (auto type : {cuda::ElementType::kF32, cuda::ElementType::kBF16}) {
      std::vector<std::vector<float>> k1, v1, k2, v2;
      ASSERT_TRUE(cuda_restore_all_to_host(from_store, *dcal, q, type, &k1, &v1).is_ok());
      ASSERT_TRUE(cuda_restore_all_to_host(from_heap, *dcal, q, type, &k2, &v2).is_ok());
      EXPECT_EQ(k1, k2) << "block " << q;
      EXPECT_EQ(v1, v2) << "block " << q;
    }
  }
  // Evicting (here: erasing) an entry while its bytes are held leaves the reader's copy intact.
  ASSERT_TRUE((*st)->erase("b1").value());
  EXPECT_EQ(std::vector<uint8_t>(held[1]->begin(), held[1]->end()), blocks[1]);
}

}  // namespace
}  // namespace kvtc
