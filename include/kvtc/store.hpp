// kvtc/store.hpp: a store of compressed KV blocks, in host memory, on local disk and in a shared Redis
// server (docs/STORE.md).
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
//   RedisTier    entries in a Redis server shared by many processes (a key prefix per model), each value
//                with a small checksummed header; pipelined batches, a pool of connections, and
//                degradation: while the server is away, calls fail fast with kIo and the tier reconnects
//                by itself, trying at most once per backoff interval.
//   TieredStore  a HostTier over an optional DiskTier over an optional RedisTier: hits below host are
//                promoted to host, entries evicted from host are demoted to disk, puts are written
//                through to Redis; batch and asynchronous operations.
//
// Sizes are in bytes and say so in their names (`capacity_bytes`); latencies are in microseconds.
// What counts against a capacity: key + value bytes in host memory (bookkeeping not counted); the
// whole file (header + key + value) on disk.
//
// Thread safety: every member function of HostTier, DiskTier, RedisTier and TieredStore may be called
// from any number of threads at once, except the destructor, which must not race with other calls.
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

// One key and its value, for put_many. raw_bytes: the uncompressed size the value stands for (the raw
// 16-bit K and V of the block), declared by the caller for the metrics' compression ratio; 0 = unknown.
struct Entry {
  std::string key;
  Bytes value;
  uint64_t raw_bytes = 0;
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
  std::string tier;              // "host", "disk", "redis", or "all" for a TieredStore as a whole
  uint64_t hits = 0;             // gets that returned a value
  uint64_t misses = 0;           // gets that returned nothing (corrupt entries included)
  uint64_t puts = 0;             // puts that stored their entry
  uint64_t put_errors = 0;       // puts refused or failed (too large, I/O error)
  uint64_t evictions = 0;        // entries pushed out to make room
  uint64_t corruptions = 0;      // entries found corrupt (bad checksum, truncated, foreign): removed
                                 // (host, disk) or left in place (redis); never returned
  uint64_t errors = 0;           // operations that failed other than by a miss or a refusal: I/O errors,
                                 // and for redis every call that found the server unreachable
  uint64_t reconnects = 0;       // redis: connections made again after the server was lost (0 elsewhere)
  uint64_t bytes_put = 0;        // value bytes of the puts that stored their entry
  uint64_t bytes_raw_put = 0;    // raw_bytes the callers declared with those puts (0 where undeclared)
  uint64_t entries = 0;          // gauge: entries held now
  uint64_t bytes_stored = 0;     // gauge: bytes counted against the capacity now
  uint64_t capacity_bytes = 0;   // gauge (redis: the server's maxmemory, 0 = unlimited or unknown)
  LatencyHistogram get_latency;  // every get, hit or miss
  LatencyHistogram put_latency;  // every put, stored or not
};

// Everything a store reports: its tiers, and for a TieredStore the traffic between them.
struct StoreMetrics {
  std::vector<TierMetrics> tiers;
  uint64_t promotions = 0;        // disk and redis hits copied into host memory
  uint64_t demotions = 0;         // host evictions written to disk (or found there already)
  uint64_t demotion_errors = 0;   // host evictions that could not be written to disk (lost)
};

// {"tiers": {"host": {"hits": .., "compression_ratio": .., "get_latency_us": {"buckets": [{"le": 1, "count": ..}, ..],
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
  // disk write failed (what was stored before stays stored) or the Redis server is unreachable.
  // raw_bytes: the uncompressed size the value stands for, if the caller knows it (Entry::raw_bytes).
  virtual Status put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes = 0) = 0;
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

  Status put(std::string_view key, const Bytes& value, uint64_t raw_bytes = 0) {
    return put(key, std::span<const uint8_t>(value), raw_bytes);
  }
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

// Where a host tier keeps its values. The default (both functions empty) is the C++ heap. A GPU server
// passes page-locked memory, kvtc::cuda::allocate_pinned / free_pinned (kvtc/kvtc_cuda.hpp), so that a
// value read with get_shared reaches the device by DMA, with no staging copy. allocate returns null when
// it cannot; the put then fails with kOutOfSpace. deallocate may run on any thread, and after the tier
// is destroyed (a reader may still hold a SharedBytes): capture nothing shorter-lived than that.
struct HostMemory {
  std::function<void*(size_t size_bytes)> allocate;
  std::function<void(void* data, size_t size_bytes)> deallocate;
};

// A value held by a host tier, shared with its reader: the bytes stay valid and unchanged while the
// reader holds them, even if the entry is replaced, erased or evicted meanwhile (zero-copy reads).
using SharedBytes = std::shared_ptr<const std::span<const uint8_t>>;

struct HostTierOptions {
  uint64_t capacity_bytes = uint64_t(1) << 30;
  EvictionPolicy policy = EvictionPolicy::kS3Fifo;
  double small_queue_fraction = 0.10;  // S3-FIFO: share of the capacity for the small FIFO
  HostMemory memory;                   // where values live (default: the heap)
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
  Status put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes = 0) override;
  GetResult get(std::string_view key) override;
  // The entry's bytes without a copy (null on a miss); counted as a get (hit or miss, latency).
  SharedBytes get_shared(std::string_view key);
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

// A put that fails (a full disk: "No space left on device (disk full; nothing stored was lost)") returns
// kIo naming the file and the system's reason, removes its temporary and changes nothing, except when
// only the fsync of the directory after the rename failed: the new entry is then held and readable
// (counted as a put and an error) but may not survive a crash, and put returns that kIo.
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
  Status put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes = 0) override;
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

struct RedisTierOptions {
  // Where the server listens: a unix socket path (used when not empty), else host and port (TCP).
  std::string unix_socket;
  std::string host = "127.0.0.1";
  int port = 6379;
  // Put in front of every key, so that models (and anything else in the server) never share keys:
  // "kvtc:" + a model id, for instance. Keys are binary-safe; so is the prefix.
  std::string key_prefix = "kvtc:";
  int connect_timeout_ms = 200;   // per connection attempt
  int command_timeout_ms = 1000;  // per command or pipelined batch (a socket read or write)
  // After the server is lost, reconnection is tried at most once per interval, which starts at
  // reconnect_backoff_min_ms and doubles after each failed try up to reconnect_backoff_max_ms; calls in
  // between fail at once with kIo, without touching the network.
  int reconnect_backoff_min_ms = 100;
  int reconnect_backoff_max_ms = 5000;
  uint32_t ttl_seconds = 0;  // expiry of every entry put (SET ... EX); 0 = none
  // Connections in the pool: a call takes a free one, or waits for one (1 = one connection under a
  // mutex). Batches use one connection for the whole pipeline.
  int pool_size = 4;
  // create fails with kIo if the server cannot be reached at creation (otherwise the tier starts
  // disconnected and connects when the server appears).
  bool require_server = false;
};

// What the server says about itself (RedisTier::server_info).
struct RedisServerInfo {
  bool connected = false;
  std::string endpoint;          // "unix:/path" or "host:port"
  std::string redis_version;     // INFO server
  uint64_t maxmemory_bytes = 0;  // CONFIG GET maxmemory; 0 = unlimited (or CONFIG refused)
  std::string maxmemory_policy;  // "allkeys-lru", ...; "" if CONFIG refused
  uint64_t used_memory_bytes = 0;  // INFO memory: everything the server holds, all clients and prefixes
  uint64_t keys = 0;             // DBSIZE: keys in the database, every prefix
};

// Entries in a Redis server (RESP over hiredis), so that many serving processes share one cache.
// Each value is stored under key_prefix + key as a 24-byte header and the value bytes:
//   magic "KVRD", u16 version 1, u16 header size 24, u64 value length, u32 CRC-32 of key and value,
//   u32 CRC-32 of bytes 0..19 (little-endian; docs/STORE.md).
// A stored value that fails any check (a foreign or garbled value, one written under another key) is a
// miss counted as a corruption and is left in place (the server's eviction or the next put replaces it).
//
// Batches are pipelined: put_many / get_many / contains_many send every command of the batch, then read
// the replies in order, on one connection.
//
// Degradation: a pooled connection that the server closed since its last use (a restart, an idle
// timeout) is replaced and the call sent again, once, without an error. A call that cannot reach the
// server (refused, reset, timed out) returns kIo, counts an error, and marks the tier disconnected: every pooled connection is closed, and for a backoff interval
// (RedisTierOptions) every call fails at once with kIo ("redis tier: unavailable") without touching the
// network. The first call after the interval tries one connection; on success the tier is connected
// again (a reconnect is counted), on failure the interval doubles. So a dead server costs at most one
// timeout per interval, not one per call. get treats nothing as a hit that it could not verify.
//
// Gauges: entries = DBSIZE and bytes_stored = INFO used_memory are the whole server's (every prefix,
// every client), read by metrics() and server_info() (one pipelined round trip); capacity_bytes is the
// server's maxmemory, read at every connection (0 = unlimited). While disconnected they report the last
// values read. entry_count() and bytes_used() are the same figures.
class RedisTier final : public Tier {
 public:
  // kInvalidArgument for bad options (no endpoint, timeouts or pool size < 1, min backoff > max); kIo only
  // with require_server when the server cannot be reached.
  static Result<std::unique_ptr<RedisTier>> create(const RedisTierOptions& options);
  ~RedisTier() override;

  const RedisTierOptions& options() const;
  // Whether the tier believes the server reachable (no call has failed since the last connection).
  bool connected() const;
  // Connection attempts made so far (successful or not), for tests of the backoff and for tools.
  uint64_t connect_attempts() const;
  // Asks the server (one round trip); kIo if it cannot be reached.
  Result<RedisServerInfo> server_info();

  std::string name() const override { return "redis"; }
  using Tier::put;
  // kIo when the server is unreachable or refuses the write (an out-of-memory server with
  // maxmemory-policy noeviction, for instance); kOutOfSpace if the value is over Redis' 512 MiB.
  Status put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes = 0) override;
  // A miss for a key not there or whose value fails a check; kIo when the server is unreachable.
  GetResult get(std::string_view key) override;
  // false when the server is unreachable (counted as an error).
  bool contains(std::string_view key) override;
  Result<bool> erase(std::string_view key) override;
  std::vector<Status> put_many(std::span<const Entry> entries) override;
  std::vector<GetResult> get_many(std::span<const std::string> keys) override;
  std::vector<bool> contains_many(std::span<const std::string> keys) override;
  uint64_t bytes_used() const override;      // the server's used_memory (see above)
  uint64_t capacity_bytes() const override;  // the server's maxmemory, 0 = unlimited
  uint64_t entry_count() const override;     // the server's DBSIZE
  TierMetrics metrics() const override;

  struct Impl;

 private:
  explicit RedisTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct TieredStoreOptions {
  bool write_through = false;  // put writes to disk as well as host (otherwise disk gets host's evictions)
  int n_threads = 2;           // threads of the pool behind the *_async operations (at least 1)
  // put writes to the Redis tier as well (the point of sharing). Without it, Redis receives host's
  // evictions when there is no disk tier, and nothing otherwise (it is then a read-only shared level).
  bool redis_write_through = true;
  // The write to Redis runs on the store's pool and put returns once the local copy landed (a failed
  // Redis write is then only counted, in the redis tier's put_errors).
  bool redis_write_async = false;
};

// A HostTier over an optional DiskTier over an optional RedisTier.
// get: host, then disk, then redis; a hit below host is copied into host (a promotion) and stays where it
// was. A Redis error during a get is a miss of that tier (counted in its errors), and the store goes on
// serving from host and disk.
// put: host (and disk with write_through); a put without write_through removes a stale disk copy of the
// key. With redis_write_through (the default) also to Redis; if the local copy landed and the Redis write
// failed, put returns that kIo with the message "stored locally; not shared: ..." (the entry is in host or
// disk and will be served from there; the store's "all" puts counts it as stored). With
// redis_write_async, put returns the local status and the Redis write follows on the pool.
// Entries evicted from host are written to disk unless disk holds the key already.
class TieredStore final : public Tier {
 public:
  // disk may be null (host only). Takes over host's eviction callback.
  static Result<std::unique_ptr<TieredStore>> create(std::unique_ptr<HostTier> host,
                                                     std::unique_ptr<DiskTier> disk,
                                                     const TieredStoreOptions& options = {});
  // disk and redis may each be null.
  static Result<std::unique_ptr<TieredStore>> create(std::unique_ptr<HostTier> host,
                                                     std::unique_ptr<DiskTier> disk,
                                                     std::unique_ptr<RedisTier> redis,
                                                     const TieredStoreOptions& options);
  ~TieredStore() override;  // waits for the async operations in flight

  HostTier& host();
  DiskTier* disk();    // null when there is no disk tier
  RedisTier* redis();  // null when there is no redis tier

  std::string name() const override { return "all"; }
  using Tier::put;
  Status put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes = 0) override;
  GetResult get(std::string_view key) override;
  // get without a copy out of host memory: a host hit is shared as it is (in the host tier's memory,
  // page-locked if it was made so); a hit below host is promoted as get does, and the bytes read from
  // there are returned in their own heap buffer. Null on a miss; the error of a disk that cannot be read.
  Result<SharedBytes> get_shared(std::string_view key);
  Result<bool> erase(std::string_view key) override;
  std::vector<Status> put_many(std::span<const Entry> entries) override;
  std::vector<GetResult> get_many(std::span<const std::string> keys) override;
  bool contains(std::string_view key) override;  // host, disk, then redis (a round trip)
  std::vector<bool> contains_many(std::span<const std::string> keys) override;  // redis pipelined
  // The local tiers only (the redis tier's figures are the whole server's: see its own metrics).
  uint64_t bytes_used() const override;      // host + disk
  uint64_t capacity_bytes() const override;  // host + disk
  uint64_t entry_count() const override;     // host + disk (an entry in both counts twice)
  // The store as a whole: tier "all". Its bytes_put / bytes_raw_put count the callers' puts (the
  // compression ratio of what was offered); the tiers' own count what each stored, promotions and
  // demotions included (with raw bytes 0: the store does not parse values).
  TierMetrics metrics() const override;

  // On the store's thread pool. The futures own copies of the keys and values they were given.
  std::future<Status> put_async(std::string key, Bytes value, uint64_t raw_bytes = 0);
  std::future<GetResult> get_async(std::string key);
  std::future<std::vector<Status>> put_many_async(std::vector<Entry> entries);
  std::future<std::vector<GetResult>> get_many_async(std::vector<std::string> keys);
  std::future<std::vector<bool>> contains_many_async(std::vector<std::string> keys);

  // "all", "host", and (if any) "disk" and "redis", with promotions and demotions.
  StoreMetrics store_metrics() const;
  std::string metrics_json() const;
  std::string metrics_prometheus() const;

  struct Impl;

 private:
  explicit TieredStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtc::store
