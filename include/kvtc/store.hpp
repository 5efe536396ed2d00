// kvtc/store.hpp: a store of compressed KV blocks, in host memory and on local disk (docs/STORE.md).
//
// Keys are byte strings: a serving engine's block key, such as vLLM's chained prefix hash of a block
// of tokens. Values are byte strings: compressed block containers, which the store never parses. A key
// is expected to name its content (a prefix hash always stands for the same tokens), so two puts of
// one key normally carry the same bytes; if they do not, the last writer wins within a tier, and no
// order is promised between a put and a concurrent get that promotes an older copy.
//
// Tiers:
//   HostTier     in memory, a byte capacity, eviction by S3-FIFO or LRU chosen at creation.
//   DiskTier     one file per entry in a directory, a byte capacity, atomic crash-safe writes, a CRC-32
//                checked on every read, recovery of the index by scanning the directory on open.
//   TieredStore  a HostTier over an optional DiskTier: hits on disk are promoted to host, entries
//                evicted from host are demoted to disk; batch and asynchronous operations.
//
// Sizes are in bytes and say so in their names (`capacity_bytes`); latencies are in microseconds.
// What counts against a capacity: key + value bytes in host memory (bookkeeping not counted); the
// whole file (header + key + value) on disk.
//
// Thread safety: every member function of HostTier, DiskTier and TieredStore may be called from any
// number of threads at once, except the destructor, which must not race with other calls.
// Errors travel as values (kvtc/status.hpp): nothing throws across this API. A miss is not an error:
// get returns an empty optional. A corrupt disk entry is reported as a miss, removed, and counted.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtc/status.hpp"

namespace kvtc::store {

using Bytes = std::vector<uint8_t>;

// One key and its value, for put_many.
struct Entry {
  std::string key;
  Bytes value;
};

// A value, nothing (a miss), or the error that prevented the lookup (a disk that cannot be read).
using GetResult = Result<std::optional<Bytes>>;

// ---------------------------------------------------------------------------------------------------
// Metrics

// Latency histogram with fixed log-scale buckets (1-2-5 series): upper bounds 1, 2, 5, 10, ...,
// 1,000,000 microseconds, then +Inf. `bucket_counts` are per bucket (not cumulative); the last one is
// the +Inf bucket.
struct LatencyHistogram {
  static const std::vector<double>& upper_bounds_us();  // 19 finite bounds
  std::vector<uint64_t> bucket_counts;                  // upper_bounds_us().size() + 1
  double sum_us = 0;
  uint64_t count = 0;
  // The smallest bucket bound below which at least q (0..1) of the observations lie; +inf if in the
  // last bucket, 0 if empty.
  double quantile_upper_bound_us(double q) const;
};

// A snapshot of one tier's counters (each a running total since creation unless marked a gauge).
struct TierMetrics {
  std::string tier;              // "host", "disk", or "all" for a TieredStore as a whole
  uint64_t hits = 0;             // gets that returned a value
  uint64_t misses = 0;           // gets that returned nothing (corrupt entries included)
  uint64_t puts = 0;             // puts that stored their entry
  uint64_t put_errors = 0;       // puts refused or failed (too large, I/O error)
  uint64_t evictions = 0;        // entries pushed out to make room
  uint64_t corruptions = 0;      // entries found corrupt (bad checksum, truncated) and removed
  uint64_t entries = 0;          // gauge: entries held now
  uint64_t bytes_stored = 0;     // gauge: bytes counted against the capacity now
  uint64_t capacity_bytes = 0;   // gauge
  LatencyHistogram get_latency;  // every get, hit or miss
  LatencyHistogram put_latency;  // every put, stored or not
};

// Everything a store reports: its tiers, and for a TieredStore the traffic between them.
struct StoreMetrics {
  std::vector<TierMetrics> tiers;
  uint64_t promotions = 0;        // disk hits copied into host memory
  uint64_t demotions = 0;         // host evictions written to disk (or found there already)
  uint64_t demotion_errors = 0;   // host evictions that could not be written to disk (lost)
};

// {"tiers": {"host": {"hits": .., "get_latency_us": {"buckets": [{"le": 1, "count": ..}, ..],
//  "sum": .., "count": .., "p50": .., "p99": ..}, ..}, ..}, "promotions": .., ...}
std::string metrics_json(const StoreMetrics& metrics);
// Prometheus text exposition format 0.0.4: kvtc_store_hits_total{tier="host"} 12, histograms
// kvtc_store_get_latency_microseconds_bucket{tier="host",le="5"} ... _sum, _count (docs/STORE.md).
std::string metrics_prometheus(const StoreMetrics& metrics);

// ---------------------------------------------------------------------------------------------------
// Tiers

class Tier {
 public:
  virtual ~Tier() = default;
  virtual std::string name() const = 0;  // "host", "disk", "all"

  // Stores (or replaces) key -> value. kOutOfSpace if key + value can never fit the capacity; kIo if a
  // disk write failed (what was stored before stays stored).
  virtual Status put(std::string_view key, std::span<const uint8_t> value) = 0;
  // The value, or nothing on a miss. Counts a hit or a miss and refreshes the entry for eviction.
  virtual GetResult get(std::string_view key) = 0;
  // Whether the key is held now. Counts nothing and does not refresh the entry.
  virtual bool contains(std::string_view key) = 0;
  // Removes the key; true if it was there.
  virtual Result<bool> erase(std::string_view key) = 0;

  // Batches: one result per item, in order. The default runs the single operations in turn.
  virtual std::vector<Status> put_many(std::span<const Entry> entries);
  virtual std::vector<GetResult> get_many(std::span<const std::string> keys);
  virtual std::vector<bool> contains_many(std::span<const std::string> keys);

  virtual uint64_t bytes_used() const = 0;
  virtual uint64_t capacity_bytes() const = 0;
  virtual uint64_t entry_count() const = 0;
  virtual TierMetrics metrics() const = 0;

  Status put(std::string_view key, const Bytes& value) { return put(key, std::span<const uint8_t>(value)); }
};

enum class EvictionPolicy {
  // S3-FIFO (Yang et al., SOSP'23): new entries enter a small FIFO (10% of the capacity); those read
  // again while there move to the main FIFO, the others leave and their key hash goes to a ghost FIFO;
  // a key found in the ghost FIFO when put again goes straight to main. Main re-inserts entries read
  // since their last pass (a frequency counter capped at 3, one decrement per pass).
  kS3Fifo,
  kLru,  // least recently used (get and put refresh)
};
const char* eviction_policy_name(EvictionPolicy policy);  // "s3fifo", "lru"

// Called with each evicted entry, after the tier's lock is released, on the thread whose put caused the
// eviction. The entry is no longer in the tier.
using EvictionCallback = std::function<void(std::string key, Bytes value)>;

struct HostTierOptions {
  uint64_t capacity_bytes = uint64_t(1) << 30;
  EvictionPolicy policy = EvictionPolicy::kS3Fifo;
  double small_queue_fraction = 0.10;  // S3-FIFO: share of the capacity for the small FIFO
};

class HostTier final : public Tier {
 public:
  // kInvalidArgument if capacity_bytes is 0 or small_queue_fraction is outside (0, 1).
  static Result<std::unique_ptr<HostTier>> create(const HostTierOptions& options);
  ~HostTier() override;

  // Replaces the eviction callback (none by default: evicted entries are dropped).
  void set_eviction_callback(EvictionCallback callback);
  EvictionPolicy policy() const;

  std::string name() const override { return "host"; }
  using Tier::put;
  Status put(std::string_view key, std::span<const uint8_t> value) override;
  GetResult get(std::string_view key) override;
  bool contains(std::string_view key) override;
  Result<bool> erase(std::string_view key) override;
  std::vector<Status> put_many(std::span<const Entry> entries) override;
  std::vector<GetResult> get_many(std::span<const std::string> keys) override;
  uint64_t bytes_used() const override;
  uint64_t capacity_bytes() const override;
  uint64_t entry_count() const override;
  TierMetrics metrics() const override;

  // Keys held now, for tests and tools (no particular order).
  std::vector<std::string> keys() const;

  struct Impl;

 private:
  explicit HostTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct DiskTierOptions {
  std::string directory;                  // created if missing (unless read_only)
  uint64_t capacity_bytes = uint64_t(16) << 30;
  // Read every file whole on open and check its CRC (otherwise open checks headers and sizes only, and
  // the CRC is checked when an entry is read).
  bool verify_checksums_on_open = false;
  // Scan and report without changing anything: no temporary or bad file is deleted, and put and erase
  // fail with kUnsupported. Takes no lock, so a directory in use by a server can be inspected.
  bool read_only = false;
  // fsync the file before rename and the directory after it (off only for benchmarks of the rest).
  bool sync = true;
  // For tests: called after an entry's temporary file is written and synced, before the rename. If it
  // returns false the put stops there, as if the process had died: the temporary stays behind and the
  // put returns kIo.
  std::function<bool()> before_rename_hook;
};

// What the scan on open found and did.
struct DiskRecovery {
  uint64_t entries = 0;               // valid entries indexed
  uint64_t bytes = 0;                 // their file bytes
  uint64_t temp_files_removed = 0;    // leftovers of interrupted writes (found, if read_only)
  uint64_t bad_files_removed = 0;     // truncated, bad header, bad checksum, duplicate (found, if read_only)
  uint64_t evicted_over_capacity = 0; // oldest entries removed because the capacity shrank
  std::vector<std::string> bad_files; // names of the bad files and why: "0123abcd.kvb: truncated"
  std::vector<std::string> ignored_files;  // names that are not the store's (left alone)
};

// Directory layout and file format: docs/STORE.md. One process at a time may open a directory for
// writing (an exclusive flock on DIR/.lock; a second open fails with kIo). Eviction is LRU by access
// order within the process; after a reopen the order starts from the files' modification times.
class DiskTier final : public Tier {
 public:
  static Result<std::unique_ptr<DiskTier>> open(const DiskTierOptions& options);
  ~DiskTier() override;

  const DiskRecovery& recovery() const;
  const std::string& directory() const;
  // The file name an entry of `key` would get with no collision ("<16 hex digits>.kvb").
  static std::string file_name_for(std::string_view key);
  // The file that holds `key` now, or "" if the key is not held.
  std::string path_of(std::string_view key) const;

  std::string name() const override { return "disk"; }
  using Tier::put;
  Status put(std::string_view key, std::span<const uint8_t> value) override;
  GetResult get(std::string_view key) override;
  bool contains(std::string_view key) override;
  Result<bool> erase(std::string_view key) override;
  uint64_t bytes_used() const override;
  uint64_t capacity_bytes() const override;
  uint64_t entry_count() const override;
  TierMetrics metrics() const override;

  struct Impl;

 private:
  explicit DiskTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct TieredStoreOptions {
  bool write_through = false;  // put writes to disk as well as host (otherwise disk gets host's evictions)
  int n_threads = 2;           // threads of the pool behind the *_async operations (at least 1)
};

// A HostTier over an optional DiskTier. get: host, then disk (a disk hit is copied into host, and stays
// on disk). put: host (and disk with write_through); a put without write_through removes a stale disk
// copy of the key. Entries evicted from host are written to disk unless disk holds the key already.
class TieredStore final : public Tier {
 public:
  // disk may be null (host only). Takes over host's eviction callback.
  static Result<std::unique_ptr<TieredStore>> create(std::unique_ptr<HostTier> host,
                                                     std::unique_ptr<DiskTier> disk,
                                                     const TieredStoreOptions& options = {});
  ~TieredStore() override;  // waits for the async operations in flight

  HostTier& host();
  DiskTier* disk();  // null when host only

  std::string name() const override { return "all"; }
  using Tier::put;
  Status put(std::string_view key, std::span<const uint8_t> value) override;
  GetResult get(std::string_view key) override;
  bool contains(std::string_view key) override;
  Result<bool> erase(std::string_view key) override;
  std::vector<Status> put_many(std::span<const Entry> entries) override;
  std::vector<GetResult> get_many(std::span<const std::string> keys) override;
  uint64_t bytes_used() const override;      // host + disk
  uint64_t capacity_bytes() const override;  // host + disk
  uint64_t entry_count() const override;     // host + disk (an entry in both counts twice)
  TierMetrics metrics() const override;      // the store as a whole: tier "all"

  // On the store's thread pool. The futures own copies of the keys and values they were given.
  std::future<Status> put_async(std::string key, Bytes value);
  std::future<GetResult> get_async(std::string key);
  std::future<std::vector<Status>> put_many_async(std::vector<Entry> entries);
  std::future<std::vector<GetResult>> get_many_async(std::vector<std::string> keys);
  std::future<std::vector<bool>> contains_many_async(std::vector<std::string> keys);

  // "all", "host" and (if any) "disk", with promotions and demotions.
  StoreMetrics store_metrics() const;
  std::string metrics_json() const;
  std::string metrics_prometheus() const;

  struct Impl;

 private:
  explicit TieredStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtc::store
