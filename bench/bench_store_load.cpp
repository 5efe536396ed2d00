// Load on each tier of the block store: N client threads x M operations of 64 KiB values (a typical block
// container), single and batched gets and puts, against the host tier, the disk tier, and a Redis tier
// over a unix socket and over TCP loopback (bench/STORE_RESULTS.md).
//
//   kvtc_bench_store_load [--threads 1,2,4] [--ops 2000] [--value-bytes 65536] [--keys 256] [--batch 16]
//                         [--port 6399]
//                         [--tiers host,disk,redis-unix,redis-unix-pool1,redis-tcp,tiered-sync,tiered-async]
//                         [--glibc-trim]
//
// Starts its own redis-server (from PATH or /usr/bin) on a unix socket in a temp directory and on
// --port, with --save "" --appendonly no, and stops it at the end. The disk tier runs with sync = false
// (no fsync: the page cache, as a benchmark of everything but the device). Every thread works on the
// same K keys, prefilled; a "put" replaces an existing key. Latencies are per call: one key for single
// operations, one batch of --batch keys for batches; throughput counts keys.
//
// tiered-sync / tiered-async: a TieredStore of a host tier over the Redis tier (unix socket), puts only,
// with the write-through to Redis in the caller's thread or on the store's pool (redis_write_async, 2
// threads). Latency is the caller's; for async, the wall time (so keys/s) runs until Redis has every
// put of the phase, since the queue would otherwise hide the cost.
//
// glibc returns the top of the heap to the kernel once 128 KiB are free there, so a batch of 16 x 64 KiB
// values freed and allocated again pays about 256 page faults each time (half a millisecond here). A
// server's heap is in a steady state, so by default the bench raises M_TRIM_THRESHOLD and
// M_MMAP_THRESHOLD (mallopt) to keep that memory; --glibc-trim leaves glibc's defaults.
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvtc/store.hpp"

extern char** environ;

namespace {

using namespace kvtc::store;
using Clock = std::chrono::steady_clock;

struct Config {
  std::vector<int> threads = {1, 2, 4};
  int ops = 2000;
  size_t value_bytes = 65536;
  int keys = 256;
  int batch = 16;
  int port = 6399;
  std::vector<std::string> tiers = {"host",      "disk",        "redis-unix",  "redis-unix-pool1",
                                    "redis-tcp", "tiered-sync", "tiered-async"};
  bool glibc_trim = false;
};

std::vector<std::string> split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(sep, pos);
    if (end == std::string::npos) end = s.size();
    if (end > pos) out.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

std::string find_redis_server() {
  const char* path = std::getenv("PATH");
  std::string dirs = std::string(path ? path : "") + ":/usr/bin:/usr/sbin";
  for (const std::string& d : split(dirs, ':')) {
    const std::string c = d + "/redis-server";
    if (::access(c.c_str(), X_OK) == 0) return c;
  }
  return "";
}

std::string key_of(int i) {
  std::string k = "bench-block-";
  k += std::to_string(i);
  return k;
}

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, size_t(q * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(i), v.end());
  return v[i];
}

struct Phase {
  const char* name;
  bool put;
  bool batched;
};

// Runs one phase on n threads; prints a table row.
void run_phase(Tier& tier, const std::string& tier_name, int n_threads, const Phase& phase, const Config& cfg,
               const std::vector<kvtc::store::Bytes>& values, const std::function<void(uint64_t)>& drain) {
  std::vector<std::vector<double>> lat(static_cast<size_t>(n_threads));
  std::vector<int> failures(static_cast<size_t>(n_threads), 0);
  const int calls = phase.batched ? std::max(1, cfg.ops / cfg.batch) : cfg.ops;
  const int per_call = phase.batched ? cfg.batch : 1;
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int t = 0; t < n_threads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(uint32_t(1234 + t));
      auto& my = lat[size_t(t)];
      my.reserve(size_t(calls));
      std::vector<Entry> entries(static_cast<size_t>(per_call));
      std::vector<std::string> keys(static_cast<size_t>(per_call));
      for (int c = 0; c < calls; ++c) {
        for (int j = 0; j < per_call; ++j) {
          const int k = int(rng() % uint32_t(cfg.keys));
          keys[size_t(j)] = key_of(k);
          if (phase.put) entries[size_t(j)] = {keys[size_t(j)], values[size_t(k)], 0};
        }
        const auto a = Clock::now();
        int bad = 0;
        if (phase.put && phase.batched) {
          for (const auto& s : tier.put_many(entries)) bad += s.is_ok() ? 0 : 1;
        } else if (phase.put) {
          bad += tier.put(keys[0], std::span<const uint8_t>(entries[0].value)).is_ok() ? 0 : 1;
        } else if (phase.batched) {
          for (const auto& r : tier.get_many(keys)) bad += (r.is_ok() && r->has_value()) ? 0 : 1;
        } else {
          auto r = tier.get(keys[0]);
          bad += (r.is_ok() && r->has_value()) ? 0 : 1;
        }
        my.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
        failures[size_t(t)] += bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  if (drain) drain(uint64_t(n_threads) * uint64_t(calls) * uint64_t(per_call));
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> all;
  int failed = 0;
  for (int t = 0; t < n_threads; ++t) {
    all.insert(all.end(), lat[size_t(t)].begin(), lat[size_t(t)].end());
    failed += failures[size_t(t)];
  }
  const double n_keys = double(n_threads) * calls * per_call;
  const double p50 = percentile(all, 0.50);
  const double p99 = percentile(all, 0.99);
  std::printf("| %-16s | %d | %-9s | %9.0f | %7.0f | %8.1f | %8.1f | %s\n", tier_name.c_str(), n_threads, phase.name,
              n_keys / wall_s, n_keys * double(cfg.value_bytes) / wall_s / 1e6, p50, p99,
              failed ? ("FAILED " + std::to_string(failed)).c_str() : "|");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      cfg.threads.clear();
      for (const auto& s : split(next())) cfg.threads.push_back(std::stoi(s));
    } else if (a == "--ops") {
      cfg.ops = std::stoi(next());
    } else if (a == "--value-bytes") {
      cfg.value_bytes = std::stoull(next());
    } else if (a == "--keys") {
      cfg.keys = std::stoi(next());
    } else if (a == "--batch") {
      cfg.batch = std::stoi(next());
    } else if (a == "--port") {
      cfg.port = std::stoi(next());
    } else if (a == "--tiers") {
      cfg.tiers = split(next());
    } else if (a == "--glibc-trim") {
      cfg.glibc_trim = true;
    } else {
      std::fprintf(stderr, "unknown argument %s (see the comment at the top of bench/bench_store_load.cpp)\n",
                   a.c_str());
      return 2;
    }
  }

  if (!cfg.glibc_trim) {
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
  }
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kvtc-bench-load-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string sock = (dir / "redis.sock").string();

  pid_t redis_pid = -1;
  const bool need_redis = std::any_of(cfg.tiers.begin(), cfg.tiers.end(),
                                      [](const std::string& t) { return t.rfind("redis", 0) == 0 || t.rfind("tiered", 0) == 0; });
  if (need_redis) {
    const std::string bin = find_redis_server();
    if (bin.empty()) {
      std::fprintf(stderr, "redis-server not found: run scripts/install_deps.sh\n");
      return 1;
    }
    std::vector<std::string> args = {bin,      "--port", std::to_string(cfg.port), "--unixsocket", sock, "--save", "",
                                     "--appendonly", "no", "--dir", dir.string(), "--logfile",
                                     (dir / "redis.log").string()};
    std::vector<char*> av;
    for (auto& s : args) av.push_back(s.data());
    av.push_back(nullptr);
    if (::posix_spawn(&redis_pid, bin.c_str(), nullptr, nullptr, av.data(), environ) != 0) {
      std::fprintf(stderr, "cannot start %s\n", bin.c_str());
      return 1;
    }
  }

  std::vector<Bytes> values(static_cast<size_t>(cfg.keys));
  std::mt19937_64 rng(42);
  for (auto& v : values) {
    v.resize(cfg.value_bytes);
    for (auto& b : v) b = uint8_t(rng());
  }

  std::printf("%zu-byte values, %d keys, %d operations per thread (batches of %d), %u hardware threads, %s\n\n",
              cfg.value_bytes, cfg.keys, cfg.ops, cfg.batch, std::thread::hardware_concurrency(),
              cfg.glibc_trim ? "glibc's malloc defaults" : "malloc trimming off");
  std::printf("| tier             | threads | operation | keys/s    | MB/s    | p50 us   | p99 us   |\n");
  std::printf("|---|---:|---|---:|---:|---:|---:|\n");
  const Phase phases[] = {{"put", true, false}, {"get", false, false}, {"put_many", true, true},
                          {"get_many", false, true}};
  int rc = 0;
  for (const std::string& name : cfg.tiers) {
    for (int n : cfg.threads) {
      std::unique_ptr<Tier> tier;
      if (name == "host") {
        HostTierOptions o;
        o.capacity_bytes = uint64_t(4) << 30;
        tier = std::move(HostTier::create(o)).value();
      } else if (name == "disk") {
        DiskTierOptions o;
        o.directory = (dir / ("disk-" + std::to_string(n))).string();
        o.capacity_bytes = uint64_t(4) << 30;
        o.sync = false;
        auto d = DiskTier::open(o);
        if (!d.is_ok()) {
          std::fprintf(stderr, "%s\n", d.status().to_string().c_str());
          return 1;
        }
        tier = std::move(d).value();
      } else if (name.rfind("redis", 0) == 0 || name.rfind("tiered", 0) == 0) {
        RedisTierOptions o;
        if (name == "redis-tcp") {
          o.port = cfg.port;
        } else {
          o.unix_socket = sock;
        }
        o.key_prefix = "kvtc:bench:";
        o.pool_size = name == "redis-unix-pool1" ? 1 : std::max(1, n);
        o.require_server = true;
        kvtc::Result<std::unique_ptr<RedisTier>> r = kvtc::io_error("not started");
        for (int attempt = 0; attempt < 100; ++attempt) {  // the server may still be starting
          r = RedisTier::create(o);
          if (r.is_ok()) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        if (!r.is_ok()) {
          std::fprintf(stderr, "%s\n", r.status().to_string().c_str());
          rc = 1;
          break;
        }
        if (name.rfind("tiered", 0) == 0) {
          HostTierOptions ho;
          ho.capacity_bytes = uint64_t(4) << 30;
          TieredStoreOptions so;
          so.redis_write_async = name == "tiered-async";
          tier = std::move(TieredStore::create(std::move(HostTier::create(ho)).value(), nullptr,
                                               std::move(r).value(), so))
                     .value();
        } else {
          tier = std::move(r).value();
        }
      } else {
        std::fprintf(stderr, "unknown tier %s\n", name.c_str());
        rc = 2;
        break;
      }
      std::vector<Entry> fill;
      for (int k = 0; k < cfg.keys; ++k) fill.push_back({key_of(k), values[size_t(k)], 0});
      for (const auto& s : tier->put_many(fill)) {
        if (!s.is_ok()) {
          std::fprintf(stderr, "prefill: %s\n", s.to_string().c_str());
          return 1;
        }
      }
      std::function<void(uint64_t)> drain;
      const bool tiered = name.rfind("tiered", 0) == 0;
      if (name == "tiered-async") {
        RedisTier* redis = static_cast<TieredStore*>(tier.get())->redis();
        auto expected = std::make_shared<uint64_t>(uint64_t(cfg.keys));  // the prefill (a fresh tier)
        drain = [redis, expected](uint64_t n_keys) {
          *expected += n_keys;
          const auto t0 = Clock::now();
          while (redis->metrics().puts < *expected && Clock::now() - t0 < std::chrono::seconds(60)) {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
        };
      }
      for (const Phase& p : phases) {
        if (tiered && !p.put) continue;  // gets hit host: the host rows
        run_phase(*tier, name, n, p, cfg, values, drain);
      }
    }
  }

  if (redis_pid > 0) {
    ::kill(redis_pid, SIGTERM);
    int status = 0;
    ::waitpid(redis_pid, &status, 0);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
