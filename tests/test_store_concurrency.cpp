// Four threads mixing puts, gets, erases and batches on each tier and on a TieredStore; then dedicated
// readers and writers on a TieredStore whose host is small enough that every put demotes and most reads
// promote, with and without write-through, sync, batched and async calls at once. Values are derived
// from their keys, so every hit is checked byte for byte; the suite runs under ASan/UBSan and under
// ThreadSanitizer in CI (scripts/test.sh --sanitize, --tsan). What was tried: 4 x 1500 mixed operations
// per tier; 3 writers and 3 readers x 400 operations per store, in two modes. What was lost: nothing is
// checked to survive (these are caches), but nothing wrong is ever returned, the capacities always
// hold, no demotion fails, and the disk directory reopens with no bad or temporary file.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
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
  EXPECT_GT(m.promotions, 0u);
}

// Writers (put, put_many, put_async, erase) and readers (get, get_many, get_async, contains_many) on
// separate threads, over 48 keys where host holds about 10 entries and disk about 30: reads mostly hit
// disk and promote, whose host evictions demote and disk evictions unlink files, while writers replace,
// erase and demote concurrently.
void readers_and_writers(bool write_through) {
  HostTierOptions ho;
  ho.capacity_bytes = 2000;
  ho.policy = write_through ? EvictionPolicy::kS3Fifo : EvictionPolicy::kLru;
  auto host = HostTier::create(ho);
  DiskTierOptions d;
  d.directory = testing::temp_dir();
  d.capacity_bytes = 6000;
  d.sync = false;
  auto disk = DiskTier::open(d);
  ASSERT_TRUE(host.is_ok() && disk.is_ok());
  TieredStoreOptions so;
  so.write_through = write_through;
  so.n_threads = 2;
  auto made = TieredStore::create(std::move(host).value(), std::move(disk).value(), so);
  ASSERT_TRUE(made.is_ok());
  TieredStore& s = **made;
  auto key_of = [](unsigned n) { return "key-" + std::to_string(n % 48); };
  std::atomic<int> bad{0};
  std::atomic<uint64_t> hits{0};
  std::atomic<int> writers_left{3};
  auto check = [&](const std::string& key, const GetResult& r) {
    if (!r.is_ok()) {
      ++bad;
    } else if (r->has_value()) {
      ++hits;
      if (**r != value_of(key)) ++bad;
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(uint32_t(200 + t));
      for (int i = 0; i < 400; ++i) {
        const std::string key = key_of(rng());
        const unsigned op = rng() % 10;
        if (op < 5) {
          if (!s.put(key, value_of(key)).is_ok()) ++bad;
        } else if (op < 7) {
          std::vector<Entry> batch;
          for (int j = 0; j < 3; ++j) {
            const std::string k = key_of(rng());
            batch.push_back({k, value_of(k), 0});
          }
          for (const Status& st : s.put_many(batch)) bad += !st.is_ok();
        } else if (op < 9) {
          if (!s.put_async(key, value_of(key)).get().is_ok()) ++bad;
        } else {
          if (!s.erase(key).is_ok()) ++bad;
        }
      }
      --writers_left;
    });
  }
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(uint32_t(300 + t));
      // At least 400 reads each, and on until the writers are done.
      for (int i = 0; i < 400 || writers_left.load() > 0; ++i) {
        const std::string key = key_of(rng());
        const unsigned op = rng() % 10;
        if (op < 6) {
          check(key, s.get(key));
        } else if (op < 8) {
          std::vector<std::string> keys = {key, key_of(rng()), key_of(rng())};
          std::vector<GetResult> rs = s.get_many(keys);
          for (size_t j = 0; j < keys.size(); ++j) check(keys[j], rs[j]);
        } else if (op < 9) {
          check(key, s.get_async(key).get());
        } else {
          const std::vector<std::string> keys = {key, key_of(rng())};
          (void)s.contains_many(keys);
        }
        if (s.host().bytes_used() > s.host().capacity_bytes() || s.disk()->bytes_used() > s.disk()->capacity_bytes()) {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  const StoreMetrics m = s.store_metrics();
  std::printf("%s: %llu hits, %llu promotions, %llu demotions, %llu disk evictions\n",
              write_through ? "write-through" : "demotion", static_cast<unsigned long long>(hits.load()),
              static_cast<unsigned long long>(m.promotions), static_cast<unsigned long long>(m.demotions),
              static_cast<unsigned long long>(m.tiers[2].evictions));
  EXPECT_GT(hits.load(), 0u);
  EXPECT_GT(m.promotions, 0u) << "no read came from disk";
  EXPECT_GT(m.demotions, 0u) << "no host eviction went to disk";
  EXPECT_EQ(m.demotion_errors, 0u);
  EXPECT_EQ(m.tiers[2].corruptions, 0u);
  const uint64_t disk_entries = s.disk()->entry_count();
  made = Status();  // close (waits for the pool)
  d.verify_checksums_on_open = true;
  auto again = DiskTier::open(d);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ((*again)->recovery().entries, disk_entries);
  EXPECT_EQ((*again)->recovery().bad_files_removed, 0u);
  EXPECT_EQ((*again)->recovery().temp_files_removed, 0u);
}

TEST(StoreConcurrency, TieredReadersAndWritersPromoteAndDemote) { readers_and_writers(false); }
TEST(StoreConcurrency, TieredReadersAndWritersWriteThrough) { readers_and_writers(true); }

}  // namespace
}  // namespace kvtc::store
