// HostTier: capacity, LRU and S3-FIFO eviction orders on small hand-made sequences, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>

#include "kvtc/store.hpp"

namespace kvtc::store {
namespace {

// Every entry below is 10 bytes: a 2-byte key and an 8-byte value; capacity 100 holds 10 of them.
Bytes value8(char c) { return Bytes(8, uint8_t(c)); }

struct Recorder {
  std::vector<std::string> evicted;
  EvictionCallback callback() {
    return [this](std::string key, Bytes) { evicted.push_back(std::move(key)); };
  }
};

std::unique_ptr<HostTier> make(EvictionPolicy policy, uint64_t capacity, Recorder* rec = nullptr) {
  HostTierOptions o;
  o.capacity_bytes = capacity;
  o.policy = policy;
  auto t = HostTier::create(o);
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  if (rec) t.value()->set_eviction_callback(rec->callback());
  return std::move(t).value();
}

// "a3" (built without operator+, which trips GCC 12's -Wrestrict false positive).
std::string name(char prefix, int i) {
  std::string s(1, prefix);
  s += std::to_string(i);
  return s;
}

void put(HostTier& t, const std::string& key) { ASSERT_TRUE(t.put(key, value8(key[1])).is_ok()) << key; }

TEST(StoreHost, CapacityNeverExceeded) {
  for (EvictionPolicy policy : {EvictionPolicy::kLru, EvictionPolicy::kS3Fifo}) {
    auto t = make(policy, 10000);
    std::mt19937 rng(7);
    for (int i = 0; i < 3000; ++i) {
      const std::string key = "key" + std::to_string(rng() % 400);
      if (rng() % 3 == 0) {
        (void)t->get(key);
        continue;
      }
      ASSERT_TRUE(t->put(key, Bytes(rng() % 900, 1)).is_ok());
      ASSERT_LE(t->bytes_used(), t->capacity_bytes());
    }
    uint64_t sum = 0;
    for (const std::string& k : t->keys()) sum += k.size() + t->get(k)->value().size();
    EXPECT_EQ(sum, t->bytes_used()) << eviction_policy_name(policy);
    EXPECT_GT(t->metrics().evictions, 0u);
  }
}

TEST(StoreHost, LruEvictsLeastRecentlyUsed) {
  Recorder rec;
  auto t = make(EvictionPolicy::kLru, 100, &rec);
  for (int i = 0; i < 10; ++i) put(*t, name('a', i));
  EXPECT_TRUE(rec.evicted.empty());
  ASSERT_TRUE(t->get("a0")->has_value());  // a0 becomes the most recent
  put(*t, "b0");
  put(*t, "b1");
  ASSERT_TRUE(t->get("a3")->has_value());
  put(*t, "b2");
  put(*t, "b3");
  EXPECT_EQ(rec.evicted, (std::vector<std::string>{"a1", "a2", "a4", "a5"}));
  EXPECT_TRUE(t->contains("a0"));
  EXPECT_TRUE(t->contains("a3"));
  EXPECT_EQ(t->entry_count(), 10u);
  EXPECT_EQ(t->metrics().evictions, 4u);
}

TEST(StoreHost, S3FifoOneHitWondersLeaveThroughSmallQueueInFifoOrder) {
  Recorder rec;
  auto t = make(EvictionPolicy::kS3Fifo, 100, &rec);
  for (int i = 0; i < 10; ++i) put(*t, name('a', i));
  for (int i = 0; i < 5; ++i) put(*t, name('b', i));
  EXPECT_EQ(rec.evicted, (std::vector<std::string>{"a0", "a1", "a2", "a3", "a4"}));
}

TEST(StoreHost, S3FifoReReferencedEntriesMoveToMain) {
  Recorder rec;
  auto t = make(EvictionPolicy::kS3Fifo, 100, &rec);
  for (int i = 0; i < 10; ++i) put(*t, name('a', i));
  ASSERT_TRUE(t->get("a0")->has_value());
  ASSERT_TRUE(t->get("a1")->has_value());
  // Eight one-hit wonders push out a2..a9; a0 and a1 were read while in small, so they moved to main.
  for (int i = 0; i < 8; ++i) put(*t, name('b', i));
  EXPECT_EQ(rec.evicted, (std::vector<std::string>{"a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"}));
  EXPECT_TRUE(t->contains("a0"));
  EXPECT_TRUE(t->contains("a1"));
  // More one-hit wonders keep leaving through small (80 bytes, above its 10-byte share): main stays.
  for (int i = 0; i < 8; ++i) put(*t, name('c', i));
  EXPECT_TRUE(t->contains("a0"));
  EXPECT_TRUE(t->contains("a1"));
  EXPECT_EQ(rec.evicted.back(), "b7") << ::testing::PrintToString(rec.evicted);
}

TEST(StoreHost, S3FifoGhostHitGoesStraightToMain) {
  Recorder rec;
  auto t = make(EvictionPolicy::kS3Fifo, 100, &rec);
  for (int i = 0; i < 10; ++i) put(*t, name('a', i));
  put(*t, "b0");  // a0 leaves through small; its key goes to the ghost queue
  ASSERT_EQ(rec.evicted, std::vector<std::string>{"a0"});
  EXPECT_FALSE(t->contains("a0"));
  put(*t, "a0");  // a ghost hit: into main, and a1 leaves small
  EXPECT_EQ(rec.evicted.back(), "a1");
  // Ten one-hit wonders: everything that was in small leaves (a2..a9, b0, then c0), a0 in main stays.
  for (int i = 0; i < 10; ++i) put(*t, name('c', i));
  EXPECT_EQ(rec.evicted,
            (std::vector<std::string>{"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "b0", "c0"}));
  EXPECT_TRUE(t->contains("a0"));
  // LRU on the same sequence loses a0: it is the oldest entry by then.
  Recorder lru_rec;
  auto lru = make(EvictionPolicy::kLru, 100, &lru_rec);
  for (int i = 0; i < 10; ++i) put(*lru, name('a', i));
  put(*lru, "b0");
  put(*lru, "a0");
  for (int i = 0; i < 10; ++i) put(*lru, name('c', i));
  EXPECT_FALSE(lru->contains("a0"));
}

TEST(StoreHost, S3FifoMainGivesReadEntriesAnotherPass) {
  Recorder rec;
  auto t = make(EvictionPolicy::kS3Fifo, 100, &rec);
  for (int i = 0; i < 10; ++i) put(*t, name('m', i));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(t->get(name('m', i))->has_value());
  // x0 makes room: every m was read while in small, so all move to main (counters reset); then small
  // holds x0 alone, at its 10-byte share, and x0 leaves. x1 likewise.
  put(*t, "x0");
  put(*t, "x1");
  ASSERT_EQ(rec.evicted, (std::vector<std::string>{"x0", "x1"}));
  ASSERT_TRUE(t->get("m1")->has_value());  // m1 read since its move
  // x0 and x1 are ghost hits: they go to main, and with small empty main evicts from its tail (m0 first,
  // the oldest). m1 is next but was read: it goes round once more (counter down), and m2 leaves instead.
  put(*t, "x0");
  put(*t, "x1");
  EXPECT_EQ(rec.evicted, (std::vector<std::string>{"x0", "x1", "m0", "m2"}));
  EXPECT_TRUE(t->contains("m1"));
  EXPECT_TRUE(t->contains("x0"));
  EXPECT_TRUE(t->contains("x1"));
}

TEST(StoreHost, OverwriteEraseAndErrors) {
  auto t = make(EvictionPolicy::kS3Fifo, 100);
  ASSERT_TRUE(t->put("k", Bytes(10, 1)).is_ok());
  ASSERT_TRUE(t->put("k", Bytes(20, 2)).is_ok());
  EXPECT_EQ(t->bytes_used(), 21u);
  EXPECT_EQ(t->get("k")->value(), Bytes(20, 2));
  Status big = t->put("big", Bytes(100, 0));
  EXPECT_EQ(big.code(), StatusCode::kOutOfSpace);
  EXPECT_EQ(t->metrics().put_errors, 1u);
  EXPECT_TRUE(t->erase("k").value());
  EXPECT_FALSE(t->erase("k").value());
  EXPECT_EQ(t->bytes_used(), 0u);
  EXPECT_FALSE(t->get("k")->has_value());
  // Keys are bytes: NULs and high bytes are fine.
  const std::string binary("\0\xff\x01", 3);
  ASSERT_TRUE(t->put(binary, Bytes{9}).is_ok());
  EXPECT_EQ(t->get(binary)->value(), Bytes{9});
  EXPECT_FALSE(t->contains(std::string("\0\xff", 2)));
  HostTierOptions bad;
  bad.capacity_bytes = 0;
  EXPECT_EQ(HostTier::create(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(StoreHost, BatchesMatchSingleOperations) {
  auto t = make(EvictionPolicy::kLru, 1000);
  std::vector<Entry> entries;
  for (int i = 0; i < 5; ++i) entries.push_back({name('k', i), Bytes(size_t(i + 1), uint8_t(i))});
  for (const Status& s : t->put_many(entries)) EXPECT_TRUE(s.is_ok());
  std::vector<std::string> keys = {"k0", "nope", "k4"};
  auto got = t->get_many(keys);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0]->value(), Bytes(1, 0));
  EXPECT_FALSE(got[1]->has_value());
  EXPECT_EQ(got[2]->value(), Bytes(5, 4));
  EXPECT_EQ(t->contains_many(keys), (std::vector<bool>{true, false, true}));
  const TierMetrics m = t->metrics();
  EXPECT_EQ(m.hits, 2u);
  EXPECT_EQ(m.misses, 1u);
  EXPECT_EQ(m.puts, 5u);
}

// A HostMemory that counts what it hands out and can be told to refuse.
struct CountingMemory {
  std::shared_ptr<std::atomic<int64_t>> live = std::make_shared<std::atomic<int64_t>>(0);
  std::shared_ptr<std::atomic<int64_t>> live_bytes = std::make_shared<std::atomic<int64_t>>(0);
  std::shared_ptr<std::atomic<bool>> refuse = std::make_shared<std::atomic<bool>>(false);
  HostMemory memory() const {
    return {[live = live, lb = live_bytes, refuse = refuse](size_t n) -> void* {
              if (*refuse) return nullptr;
              ++*live;
              *lb += int64_t(n);
              return ::operator new(n);
            },
            [live = live, lb = live_bytes](void* p, size_t n) {
              --*live;
              *lb -= int64_t(n);
              ::operator delete(p);
            }};
  }
};

// Values live in the caller's memory (a GPU server's page-locked pages) and get_shared hands them out
// without a copy; a reader's bytes stay valid and unchanged through overwrite, eviction and the tier's
// own destruction, and every allocation is given back once the last holder lets go.
TEST(StoreHost, CallerMemoryAndZeroCopyReads) {
  CountingMemory mem;
  SharedBytes held;
  {
    HostTierOptions o;
    o.capacity_bytes = 100;
    o.policy = EvictionPolicy::kLru;
    o.memory = mem.memory();
    auto t = HostTier::create(o).value();
    ASSERT_TRUE(t->put("a", Bytes(40, 7)).is_ok());
    EXPECT_EQ(*mem.live, 1);
    EXPECT_EQ(*mem.live_bytes, 40);
    held = t->get_shared("a");
    ASSERT_NE(held, nullptr);
    SharedBytes again = t->get_shared("a");
    EXPECT_EQ(again->data(), held->data()) << "get_shared must not copy";
    EXPECT_EQ(t->get("a")->value(), Bytes(40, 7));  // get still copies
    EXPECT_EQ(t->get_shared("missing"), nullptr);
    EXPECT_EQ(t->metrics().hits, 3u);
    EXPECT_EQ(t->metrics().misses, 1u);
    // Overwritten while held: the reader keeps the old bytes, the tier has the new ones.
    ASSERT_TRUE(t->put("a", Bytes(40, 9)).is_ok());
    EXPECT_EQ(*mem.live, 2);
    EXPECT_EQ(Bytes(held->begin(), held->end()), Bytes(40, 7));
    EXPECT_EQ(t->get("a")->value(), Bytes(40, 9));
    // Evicted while held (two more entries push "a" out of 100 bytes).
    SharedBytes newer = t->get_shared("a");
    ASSERT_TRUE(t->put("b", Bytes(40, 1)).is_ok());
    ASSERT_TRUE(t->put("c", Bytes(40, 2)).is_ok());
    EXPECT_FALSE(t->contains("a"));
    EXPECT_EQ(Bytes(newer->begin(), newer->end()), Bytes(40, 9));
    newer.reset();
    EXPECT_EQ(*mem.live, 3);  // held's old "a", "b", "c"
    // Memory that cannot be had: a clear kOutOfSpace, and the tier is unchanged.
    *mem.refuse = true;
    Status s = t->put("d", Bytes(10, 3));
    EXPECT_EQ(s.code(), StatusCode::kOutOfSpace);
    EXPECT_NE(s.message().find("could not allocate 10 bytes"), std::string::npos) << s.message();
    auto many = t->put_many(std::vector<Entry>{{"e", Bytes(5, 1), 0}});
    EXPECT_EQ(many[0].code(), StatusCode::kOutOfSpace);
    EXPECT_EQ(t->entry_count(), 2u);
    EXPECT_EQ(t->metrics().put_errors, 2u);
    // Empty values need no memory.
    ASSERT_TRUE(t->put("z", Bytes()).is_ok());
    EXPECT_EQ(t->get_shared("z")->size(), 0u);
  }
  EXPECT_EQ(*mem.live, 1) << "the tier is gone; only the reader's block remains";
  EXPECT_EQ(Bytes(held->begin(), held->end()), Bytes(40, 7));
  held.reset();
  EXPECT_EQ(*mem.live, 0);
  EXPECT_EQ(*mem.live_bytes, 0);
  HostTierOptions half;
  half.memory.allocate = [](size_t) -> void* { return nullptr; };
  EXPECT_EQ(HostTier::create(half).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtc::store
