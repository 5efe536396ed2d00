// kvtc store stats [DIR] [--redis-socket P | --redis-host H --redis-port N] [--json] [--quick] [--repair];
// kvtc store put DIR KEY FILE; kvtc store get DIR KEY -o FILE
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "kvtc/store.hpp"

namespace kvtc::cli {

namespace {

// A key given on the command line: text, or bytes in hex with --hex.
std::string parse_key(const std::string& text, bool hex) {
  if (!hex) return text;
  if (text.size() % 2 != 0) fail(invalid_argument("--hex key needs an even number of digits"), text);
  std::string out;
  for (size_t i = 0; i < text.size(); i += 2) {
    const std::string pair = text.substr(i, 2);
    char* end = nullptr;
    const long v = std::strtol(pair.c_str(), &end, 16);
    if (end != pair.c_str() + 2) fail(invalid_argument("not a hex digit pair: " + pair), text);
    out.push_back(char(v));
  }
  return out;
}

std::unique_ptr<store::DiskTier> open_store(const std::string& dir, bool read_only, bool verify) {
  store::DiskTierOptions o;
  o.directory = dir;
  o.capacity_bytes = std::numeric_limits<uint64_t>::max();
  o.read_only = read_only;
  o.verify_checksums_on_open = verify;
  return unwrap(store::DiskTier::open(o), dir);
}

// What a Redis tier's server reports, as JSON (connected false and the error when unreachable).
nlohmann::json redis_stats(const store::RedisTierOptions& o) {
  auto tier = unwrap(store::RedisTier::create(o), "redis");
  auto info = tier->server_info();
  const std::string endpoint = o.unix_socket.empty() ? o.host + ":" + std::to_string(o.port) : "unix:" + o.unix_socket;
  nlohmann::json j = {{"endpoint", endpoint},
                      {"key_prefix", o.key_prefix},
                      {"connected", info.is_ok()}};
  if (!info.is_ok()) {
    j["error"] = info.status().to_string();
    return j;
  }
  j["redis_version"] = info->redis_version;
  j["maxmemory_bytes"] = info->maxmemory_bytes;
  j["maxmemory_policy"] = info->maxmemory_policy;
  j["used_memory_bytes"] = info->used_memory_bytes;
  j["keys"] = info->keys;
  return j;
}

void print_redis(const nlohmann::json& j) {
  std::printf("redis %s (prefix \"%s\"): ", j["endpoint"].get<std::string>().c_str(),
              j["key_prefix"].get<std::string>().c_str());
  if (!j["connected"].get<bool>()) {
    std::printf("unreachable: %s\n", j["error"].get<std::string>().c_str());
    return;
  }
  std::printf("Redis %s\n", j["redis_version"].get<std::string>().c_str());
  std::printf("  used memory: %llu bytes\n", static_cast<unsigned long long>(j["used_memory_bytes"].get<uint64_t>()));
  const uint64_t mm = j["maxmemory_bytes"].get<uint64_t>();
  if (mm == 0) {
    std::printf("  maxmemory: unlimited (or not readable), policy %s\n",
                j["maxmemory_policy"].get<std::string>().c_str());
  } else {
    std::printf("  maxmemory: %llu bytes, policy %s\n", static_cast<unsigned long long>(mm),
                j["maxmemory_policy"].get<std::string>().c_str());
  }
  std::printf("  keys in the database (every prefix): %llu\n",
              static_cast<unsigned long long>(j["keys"].get<uint64_t>()));
}

}  // namespace

void register_store(CLI::App& app) {
  auto* store_cmd =
      app.add_subcommand("store", "Inspect and use the block store: a disk tier, a Redis tier's server (docs/STORE.md)");
  store_cmd->require_subcommand(1);

  struct StatsArgs {
    std::string dir;
    bool json = false;
    bool quick = false;
    bool repair = false;
    store::RedisTierOptions redis;
  };
  auto sa = std::make_shared<StatsArgs>();
  sa->redis.host.clear();
  sa->redis.port = 6379;
  auto* stats = store_cmd->add_subcommand(
      "stats", "Scan a disk tier directory (entries, bytes, leftover temporaries and corrupt files) and/or ask a "
               "Redis tier's server (memory, maxmemory, keys)");
  stats->add_option("dir", sa->dir, "The disk tier's directory")->check(CLI::ExistingDirectory);
  stats->add_option("--redis-socket", sa->redis.unix_socket, "A Redis tier's server: its unix socket");
  stats->add_option("--redis-host", sa->redis.host, "A Redis tier's server: its host (TCP)");
  stats->add_option("--redis-port", sa->redis.port, "... and port")->capture_default_str();
  stats->add_option("--redis-prefix", sa->redis.key_prefix, "The tier's key prefix")->capture_default_str();
  stats->add_flag("--json", sa->json, "Print JSON");
  stats->add_flag("--quick", sa->quick, "Check headers and sizes only, not every file's CRC");
  stats->add_flag("--repair", sa->repair,
                  "Delete temporaries and bad files (takes the directory's lock: not while a server has it open)");
  stats->callback([sa] {
    const bool with_redis = !sa->redis.unix_socket.empty() || !sa->redis.host.empty();
    if (sa->dir.empty() && !with_redis) {
      fail(invalid_argument("give a disk tier's directory, --redis-socket or --redis-host"), "store stats");
    }
    nlohmann::json redis;
    if (with_redis) {
      sa->redis.connect_timeout_ms = 1000;
      sa->redis.command_timeout_ms = 5000;
      sa->redis.pool_size = 1;
      redis = redis_stats(sa->redis);
    }
    if (sa->dir.empty()) {
      if (sa->json) {
        std::printf("%s\n", nlohmann::json({{"redis", redis}}).dump(2).c_str());
      } else {
        print_redis(redis);
      }
      if (!redis["connected"].get<bool>()) std::exit(1);
      return;
    }
    auto tier = open_store(sa->dir, !sa->repair, !sa->quick);
    const store::DiskRecovery& r = tier->recovery();
    if (sa->json) {
      nlohmann::json j = {{"directory", sa->dir},
                          {"entries", r.entries},
                          {"bytes", r.bytes},
                          {"checksums_verified", !sa->quick},
                          {"repaired", sa->repair},
                          {"temp_files", r.temp_files_removed},
                          {"bad_files", r.bad_files},
                          {"ignored_files", r.ignored_files}};
      if (with_redis) j["redis"] = redis;
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("%s: %llu entries, %llu bytes (%s)\n", sa->dir.c_str(), static_cast<unsigned long long>(r.entries),
                static_cast<unsigned long long>(r.bytes),
                sa->quick ? "headers and sizes checked" : "every checksum verified");
    const char* verb = sa->repair ? "removed" : "found";
    std::printf("  leftover temporary files %s: %llu\n", verb, static_cast<unsigned long long>(r.temp_files_removed));
    std::printf("  bad files %s: %llu\n", verb, static_cast<unsigned long long>(r.bad_files.size()));
    for (const std::string& b : r.bad_files) std::printf("    %s\n", b.c_str());
    if (!r.ignored_files.empty()) {
      std::printf("  other files (left alone): %llu\n", static_cast<unsigned long long>(r.ignored_files.size()));
    }
    if (with_redis) print_redis(redis);
  });

  struct PutGetArgs {
    std::string dir, key, file;
    bool hex = false;
    uint64_t capacity_bytes = uint64_t(16) << 30;
  };
  auto pa = std::make_shared<PutGetArgs>();
  auto* put = store_cmd->add_subcommand("put", "Store FILE's bytes under KEY in a disk tier");
  put->add_option("dir", pa->dir, "The disk tier's directory (created if missing)")->required();
  put->add_option("key", pa->key, "The key (text, or hex bytes with --hex)")->required();
  put->add_option("file", pa->file, "The value")->required()->check(CLI::ExistingFile);
  put->add_flag("--hex", pa->hex, "KEY is hex");
  put->add_option("--capacity-bytes", pa->capacity_bytes, "The tier's capacity (older entries are evicted)");
  put->callback([pa] {
    store::DiskTierOptions o;
    o.directory = pa->dir;
    o.capacity_bytes = pa->capacity_bytes;
    auto tier = unwrap(store::DiskTier::open(o), pa->dir);
    const std::vector<uint8_t> bytes = unwrap(read_bytes(pa->file), pa->file);
    check(tier->put(parse_key(pa->key, pa->hex), bytes), pa->dir);
  });

  auto ga = std::make_shared<PutGetArgs>();
  auto* get = store_cmd->add_subcommand("get", "Write the value stored under KEY to a file (exit 2 if absent)");
  get->add_option("dir", ga->dir, "The disk tier's directory")->required()->check(CLI::ExistingDirectory);
  get->add_option("key", ga->key, "The key (text, or hex bytes with --hex)")->required();
  get->add_option("-o,--output", ga->file, "Where to write the value")->required();
  get->add_flag("--hex", ga->hex, "KEY is hex");
  get->callback([ga] {
    auto tier = open_store(ga->dir, /*read_only=*/true, /*verify=*/false);
    auto value = unwrap(tier->get(parse_key(ga->key, ga->hex)), ga->dir);
    if (!value) {
      std::fprintf(stderr, "kvtc: %s: no entry for that key\n", ga->dir.c_str());
      std::exit(2);
    }
    check(write_bytes_atomic(ga->file, *value), ga->file);
  });
}

}  // namespace kvtc::cli
