// Four threads mixing puts, gets, erases and batches on each tier and on a TieredStore. Values are
// derived from their keys, so every hit is checked byte for byte; the suite runs under ASan/UBSan in CI
// (and is meant for ThreadSanitizer too). What was tried: 4 x 1500 mixed operations per tier. What was
// lost: nothing is checked to survive (these are caches), but nothing wrong is ever returned and the
// capacities always hold.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "kvtc/store.hpp"
#include "temp_dir.hpp"

namespace kvtc::store {
namespace {

Bytes value_of(const std::string& key) {
  Bytes v(64 + (key.size() * 37) % 200);
  for (size_t i = 0; i < v.size(); ++i) v[i] = uint8_t(key[i % key.size()] + i);
  return v;
}

void hammer(Tier& tier, int n_ops) {
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(uint32_t(100 + t));
      for (int i = 0; i < n_ops; ++i) {
        const std::string key = "key-" + std::to_string(rng() % 64) + std::string(rng() % 8, 'x');
        const unsigned op = rng() % 10;
        if (op < 4) {
          if (!tier.put(key, value_of(key)).is_ok()) ++bad;
        } else if (op < 8) {
          auto r = tier.get(key);
          if (!r.is_ok() || (r->has_value() && **r != value_of(key))) ++bad;
        } else if (op == 8) {
          if (!tier.erase(key).is_ok()) ++bad;
        } else {
          std::vector<std::string> keys = {key, key + "x", "key-1"};
          for (const auto& r : tier.get_many(keys)) {
            if (!r.is_ok()) ++bad;
          }
          (void)tier.contains_many(keys);
        }
        if (tier.bytes_used() > tier.capacity_bytes()) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0) << tier.name();
  EXPECT_LE(tier.bytes_used(), tier.capacity_bytes());
}

TEST(StoreConcurrency, HostTierBothPolicies) {
  for (EvictionPolicy p : {EvictionPolicy::kLru, EvictionPolicy::kS3Fifo}) {
    HostTierOptions o;
    o.capacity_bytes = 4000;
    o.policy = p;
    auto t = HostTier::create(o);
    ASSERT_TRUE(t.is_ok());
    hammer(**t, 3000);
  }
}

TEST(StoreConcurrency, DiskTier) {
  DiskTierOptions o;
  o.directory = testing::temp_dir();
  o.capacity_bytes = 6000;
  o.sync = false;
  auto t = DiskTier::open(o);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  hammer(**t, 1500);
  EXPECT_EQ((*t)->metrics().corruptions, 0u);
  // What the index says is what the directory holds.
  const uint64_t entries = (*t)->entry_count();
  t = Status();  // close
  o.verify_checksums_on_open = true;
  auto again = DiskTier::open(o);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ((*again)->recovery().entries, entries);
  EXPECT_EQ((*again)->recovery().bad_files_removed, 0u);
  EXPECT_EQ((*again)->recovery().temp_files_removed, 0u);
}

TEST(StoreConcurrency, TieredStore) {
  HostTierOptions ho;
  ho.capacity_bytes = 2000;
  auto host = HostTier::create(ho);
  DiskTierOptions d;
  d.directory = testing::temp_dir();
  d.capacity_bytes = 6000;
  d.sync = false;
  auto disk = DiskTier::open(d);
  ASSERT_TRUE(host.is_ok() && disk.is_ok());
  auto s = TieredStore::create(std::move(host).value(), std::move(disk).value());
  ASSERT_TRUE(s.is_ok());
  hammer(**s, 1500);
  // Async operations from several threads at once.
  std::vector<std::future<GetResult>> gets;
  for (int i = 0; i < 32; ++i) gets.push_back((*s)->get_async("key-" + std::to_string(i)));
  for (int i = 0; i < 32; ++i) {
    auto r = gets[size_t(i)].get();
    ASSERT_TRUE(r.is_ok());
    if (r->has_value()) {
      EXPECT_EQ(**r, value_of("key-" + std::to_string(i)));
    }
  }
  const StoreMetrics m = (*s)->store_metrics();
  EXPECT_EQ(m.demotion_errors, 0u);
  EXPECT_GT(m.demotions, 0u);
}

}  // namespace
}  // namespace kvtc::store
