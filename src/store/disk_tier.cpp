// DiskTier: one file per entry, an in-memory index rebuilt by a scan on open, LRU eviction.
//
// Locking: operations on a key hold the stripe lock of its hash (one of kStripes) around the file work,
// and the index lock `mu` briefly inside it (order: stripe, then mu). Evicted files are unlinked after
// the stripe of the put that evicted them is released, each under its own stripe, and only if no put
// has claimed the file name again in between.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <array>
#include <filesystem>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "kvtc/store.hpp"
#include "store/counters.hpp"
#include "store/disk_format.hpp"
#include "store/eviction.hpp"
#include "store/key_hash.hpp"

namespace kvtc::store {

using detail::bump;

namespace {
constexpr size_t kStripes = 64;
}

struct DiskTier::Impl {
  struct IndexEntry {
    std::string file;
    detail::PolicyNode node;
  };
  struct Victim {
    std::string key;
    std::string file;
  };

  DiskTierOptions options;
  DiskRecovery recovery;
  int lock_fd = -1;
  std::array<std::mutex, kStripes> stripes;
  mutable std::mutex mu;
  std::unordered_map<std::string, IndexEntry, detail::TransparentHash, std::equal_to<>> index;  // guarded by mu
  std::unordered_set<std::string> files;                // names in use, guarded by mu
  std::unique_ptr<detail::Evictor> lru;                 // guarded by mu
  uint64_t bytes = 0;                                   // guarded by mu
  detail::TierCounters counters;

  ~Impl() {
    if (lock_fd >= 0) ::close(lock_fd);
  }

  std::string path(const std::string& file) const { return options.directory + "/" + file; }
  std::mutex& stripe(uint64_t h) { return stripes[h % kStripes]; }

  // Under mu: a free name for a new key of hash h (collisions get "-1", "-2", ...).
  std::string claim_name(uint64_t h) {
    for (int n = 0;; ++n) {
      std::string name = detail::entry_file_name(h, n);
      if (files.insert(name).second) return name;
    }
  }

  // Under mu: adds or updates the index entry of key; evicts down to the capacity into `victims`.
  void index_put(std::string_view key, const std::string& file, uint64_t size, std::vector<Victim>& victims) {
    auto it = index.find(key);
    if (it != index.end()) {
      bytes -= it->second.node.size_bytes;
      lru->resized(&it->second.node, size);
      lru->accessed(&it->second.node);
    } else {
      it = index.emplace(std::string(key), IndexEntry{}).first;
      it->second.file = file;
      it->second.node.key = &it->first;
      it->second.node.size_bytes = size;
      lru->inserted(&it->second.node);
    }
    files.insert(file);
    bytes += size;
    evict_over_capacity(victims);
  }

  void evict_over_capacity(std::vector<Victim>& victims) {
    while (bytes > options.capacity_bytes) {
      detail::PolicyNode* v = lru->pop_victim();
      if (v == nullptr) break;
      auto it = index.find(*v->key);
      bytes -= v->size_bytes;
      files.erase(it->second.file);
      victims.push_back({it->first, it->second.file});
      index.erase(it);
      bump(counters.evictions);
    }
  }

  // Under mu: forgets key (its file is the caller's to delete).
  void index_drop(std::string_view key) {
    auto it = index.find(key);
    if (it == index.end()) return;
    lru->removed(&it->second.node);
    bytes -= it->second.node.size_bytes;
    files.erase(it->second.file);
    index.erase(it);
  }

  // Not under any lock: deletes the files of evicted entries that no put has claimed since.
  void remove_victims(const std::vector<Victim>& victims) {
    for (const Victim& v : victims) {
      std::lock_guard s(stripe(detail::hash_key(v.key)));
      {
        std::lock_guard lock(mu);
        if (files.count(v.file)) continue;
      }
      ::unlink(path(v.file).c_str());
    }
  }

  Status scan();
};

Status DiskTier::Impl::scan() {
  namespace fs = std::filesystem;
  struct Found {
    detail::EntryInfo info;
    std::string file;
  };
  std::vector<Found> found;
  std::error_code ec;
  bool removed_any = false;
  for (const auto& de : fs::directory_iterator(options.directory, ec)) {
    const std::string file = de.path().filename().string();
    if (file == ".lock") continue;
    uint64_t h = 0;
    if (detail::is_temp_file_name(file)) {
      ++recovery.temp_files_removed;
      if (!options.read_only) {
        ::unlink(path(file).c_str());
        removed_any = true;
      }
      continue;
    }
    if (!detail::parse_entry_file_name(file, &h)) {
      recovery.ignored_files.push_back(file);
      continue;
    }
    auto info = detail::scan_entry_file(path(file), options.verify_checksums_on_open);
    Status bad;
    if (!info.is_ok()) {
      bad = info.status();
    } else if (detail::hash_key(info->key) != h) {
      bad = corrupt("its key does not match its file name");
    }
    if (!bad.is_ok()) {
      ++recovery.bad_files_removed;
      bump(counters.corruptions);
      recovery.bad_files.push_back(file + ": " + bad.message());
      if (!options.read_only) {
        ::unlink(path(file).c_str());
        removed_any = true;
      }
      continue;
    }
    found.push_back({std::move(info).value(), file});
  }
  if (ec) return io_error(options.directory + ": cannot list: " + ec.message());
  // Oldest first, so that the LRU order starts from the modification times.
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return a.info.mtime_ns != b.info.mtime_ns ? a.info.mtime_ns < b.info.mtime_ns : a.file < b.file;
  });
  std::lock_guard lock(mu);
  for (Found& f : found) {
    if (index.count(f.info.key)) {  // two files of one key: keep the newer
      const std::string older = index.find(f.info.key)->second.file;
      index_drop(f.info.key);
      ++recovery.bad_files_removed;
      recovery.bad_files.push_back(older + ": duplicate of " + f.file);
      if (!options.read_only) {
        ::unlink(path(older).c_str());
        removed_any = true;
      }
    }
    auto it = index.emplace(f.info.key, IndexEntry{}).first;
    it->second.file = f.file;
    it->second.node.key = &it->first;
    it->second.node.size_bytes = f.info.file_bytes;
    lru->inserted(&it->second.node);
    files.insert(f.file);
    bytes += f.info.file_bytes;
  }
  if (!options.read_only) {
    std::vector<Victim> victims;
    evict_over_capacity(victims);
    recovery.evicted_over_capacity = victims.size();
    for (const Victim& v : victims) ::unlink(path(v.file).c_str());
    removed_any = removed_any || !victims.empty();
  }
  recovery.entries = index.size();
  recovery.bytes = bytes;
  if (removed_any && options.sync) return detail::fsync_directory(options.directory);
  return Status::ok();
}

Result<std::unique_ptr<DiskTier>> DiskTier::open(const DiskTierOptions& options) {
  if (options.directory.empty()) return invalid_argument("disk tier: no directory given");
  if (options.capacity_bytes == 0) return invalid_argument("disk tier: capacity_bytes must be positive");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->lru = detail::make_evictor(EvictionPolicy::kLru, options.capacity_bytes, 0.1);
  std::error_code ec;
  if (!options.read_only) {
    std::filesystem::create_directories(options.directory, ec);
    if (ec) return io_error(options.directory + ": cannot create: " + ec.message());
  }
  if (!std::filesystem::is_directory(options.directory, ec)) {
    return io_error(options.directory + ": not a directory");
  }
  if (!options.read_only) {
    const std::string lock_path = options.directory + "/.lock";
    impl->lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (impl->lock_fd < 0) return io_error(lock_path + ": " + std::strerror(errno));
    if (::flock(impl->lock_fd, LOCK_EX | LOCK_NB) != 0) {
      return io_error(options.directory + ": in use by another process (" + std::strerror(errno) + ")");
    }
  }
  Status s = impl->scan();
  if (!s.is_ok()) return s;
  return std::unique_ptr<DiskTier>(new DiskTier(std::move(impl)));
}

DiskTier::DiskTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DiskTier::~DiskTier() = default;

const DiskRecovery& DiskTier::recovery() const { return impl_->recovery; }
const std::string& DiskTier::directory() const { return impl_->options.directory; }

std::string DiskTier::file_name_for(std::string_view key) {
  return detail::entry_file_name(detail::hash_key(key), 0);
}

std::string DiskTier::path_of(std::string_view key) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->index.find(key);
  return it == impl_->index.end() ? std::string() : impl_->path(it->second.file);
}

Status DiskTier::put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  Impl& d = *impl_;
  if (d.options.read_only) {
    bump(d.counters.put_errors);
    return unsupported("disk tier " + d.options.directory + ": opened read-only");
  }
  const uint64_t size = detail::kEntryHeaderBytes + key.size() + value.size();
  if (size > d.options.capacity_bytes) {
    bump(d.counters.put_errors);
    return {StatusCode::kOutOfSpace, "disk tier: an entry of " + std::to_string(size) +
                                         " bytes exceeds the capacity of " +
                                         std::to_string(d.options.capacity_bytes) + " bytes"};
  }
  const uint64_t h = detail::hash_key(key);
  std::vector<Impl::Victim> victims;
  Status w;
  {
    std::lock_guard s(d.stripe(h));
    std::string file;
    bool claimed = false;
    {
      std::lock_guard lock(d.mu);
      auto it = d.index.find(key);
      if (it != d.index.end()) {
        file = it->second.file;
      } else {
        file = d.claim_name(h);
        claimed = true;
      }
    }
    bool in_place = false;
    w = detail::write_entry_file(d.options.directory, file, key, value, d.options.sync,
                                 d.options.before_rename_hook, &in_place);
    if (!w.is_ok() && !in_place) {
      if (claimed) {
        std::lock_guard lock(d.mu);
        d.files.erase(file);
      }
      bump(d.counters.put_errors);
      if (w.code() == StatusCode::kIo) bump(d.counters.errors);
      return w;
    }
    // In place (only the directory's fsync may have failed): readers see the new file, so the index
    // must say so, or the file would be served under a stale size now and come back after a reopen.
    std::lock_guard lock(d.mu);
    d.index_put(key, file, size, victims);
  }
  d.remove_victims(victims);
  d.counters.stored(value.size(), raw_bytes);
  if (!w.is_ok()) bump(d.counters.errors);
  return w;
}

GetResult DiskTier::get(std::string_view key) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  Impl& d = *impl_;
  std::lock_guard s(d.stripe(detail::hash_key(key)));
  std::string file;
  {
    std::lock_guard lock(d.mu);
    auto it = d.index.find(key);
    if (it == d.index.end()) {
      bump(d.counters.misses);
      return std::optional<Bytes>();
    }
    file = it->second.file;
    d.lru->accessed(&it->second.node);
  }
  bool missing = false;
  auto r = detail::read_entry_file(d.path(file), &missing);
  if (r.is_ok() && r->key == key) {
    bump(d.counters.hits);
    return std::optional<Bytes>(std::move(r->value));
  }
  if (!r.is_ok() && r.status().code() == StatusCode::kIo && !missing) {
    bump(d.counters.errors);
    return r.status();  // the disk refused: an error, not a miss
  }
  // Deleted behind our back (a miss), or corrupt: never served, removed, counted.
  if (!missing) {
    bump(d.counters.corruptions);
    if (!d.options.read_only) ::unlink(d.path(file).c_str());
  }
  {
    std::lock_guard lock(d.mu);
    d.index_drop(key);
  }
  bump(d.counters.misses);
  return std::optional<Bytes>();
}

bool DiskTier::contains(std::string_view key) {
  std::lock_guard lock(impl_->mu);
  return impl_->index.find(key) != impl_->index.end();
}

Result<bool> DiskTier::erase(std::string_view key) {
  Impl& d = *impl_;
  if (d.options.read_only) return unsupported("disk tier " + d.options.directory + ": opened read-only");
  std::lock_guard s(d.stripe(detail::hash_key(key)));
  std::string file;
  {
    std::lock_guard lock(d.mu);
    auto it = d.index.find(key);
    if (it == d.index.end()) return false;
    file = it->second.file;
    d.index_drop(key);
  }
  if (::unlink(d.path(file).c_str()) != 0 && errno != ENOENT) {
    return io_error(d.path(file) + ": cannot remove: " + std::strerror(errno));
  }
  return true;
}

uint64_t DiskTier::bytes_used() const {
  std::lock_guard lock(impl_->mu);
  return impl_->bytes;
}

uint64_t DiskTier::capacity_bytes() const { return impl_->options.capacity_bytes; }

uint64_t DiskTier::entry_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->index.size();
}

TierMetrics DiskTier::metrics() const {
  TierMetrics m = impl_->counters.snapshot();
  m.tier = name();
  std::lock_guard lock(impl_->mu);
  m.entries = impl_->index.size();
  m.bytes_stored = impl_->bytes;
  m.capacity_bytes = impl_->options.capacity_bytes;
  return m;
}

}  // namespace kvtc::store
