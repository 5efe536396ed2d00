// RedisTier against a real redis-server that each test starts on a unix socket in its own temp directory
// (--port 0 --save "" --appendonly no) and stops in TearDown: round trips, pipelined batches against
// single operations, foreign and garbled values, two TieredStores sharing blocks through Redis, the
// server stopped and restarted mid-run (and frozen, for the backoff), and threads mixing operations.
// Without redis-server on PATH or in /usr/bin the tests fail and say to run scripts/install_deps.sh.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "kvtc/store.hpp"
#include "temp_dir.hpp"

extern char** environ;

namespace kvtc::store {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string find_redis_server() {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  dirs += ":/usr/bin:/usr/sbin";
  size_t pos = 0;
  while (pos <= dirs.size()) {
    size_t end = dirs.find(':', pos);
    if (end == std::string::npos) end = dirs.size();
    const std::string candidate = dirs.substr(pos, end - pos) + "/redis-server";
    if (end > pos && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    pos = end + 1;
  }
  return "";
}

// A redis-server child process on DIR/redis.sock, and a tiny RESP client to poke at it directly.
class RedisServer {
 public:
  explicit RedisServer(std::string dir) : dir_(std::move(dir)), socket_(dir_ + "/redis.sock") {}
  ~RedisServer() { stop(); }

  const std::string& socket_path() const { return socket_; }

  // Starts the server and waits (up to 5 s) until it answers PING.
  ::testing::AssertionResult start() {
    const std::string bin = find_redis_server();
    if (bin.empty()) {
      return ::testing::AssertionFailure()
             << "redis-server not found on PATH or in /usr/bin: run scripts/install_deps.sh (it installs "
                "Debian's redis-server)";
    }
    std::vector<std::string> args = {bin,          "--port",       "0",         "--unixsocket", socket_,
                                     "--unixsocketperm", "700",   "--save",    "",             "--appendonly",
                                     "no",         "--dir",        dir_,        "--logfile",    dir_ + "/redis.log",
                                     "--daemonize", "no"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (::posix_spawn(&pid_, bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
      return ::testing::AssertionFailure() << "cannot start " << bin;
    }
    const auto t0 = Clock::now();
    while (seconds_since(t0) < 5) {
      if (command({"PING"}) == "+PONG") return ::testing::AssertionSuccess();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return ::testing::AssertionFailure() << "redis-server did not answer on " << socket_ << " within 5 s";
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    ::unlink(socket_.c_str());
  }
  void freeze() { ::kill(pid_, SIGSTOP); }
  void thaw() { ::kill(pid_, SIGCONT); }

  // Sends one command; returns "+OK", "-ERR ...", ":1", "(nil)", the bulk string's bytes, or "" if the
  // server cannot be reached.
  std::string command(const std::vector<std::string>& args) const {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return "";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      std::string req = "*" + std::to_string(args.size()) + "\r\n";
      for (const auto& a : args) req += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
      if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size())) {
        std::string buf;
        char c[4096];
        for (;;) {
          const ssize_t n = ::recv(fd, c, sizeof c, 0);
          if (n <= 0) break;
          buf.append(c, size_t(n));
          const size_t eol = buf.find("\r\n");
          if (eol == std::string::npos) continue;
          if (buf[0] != '$') {
            out = buf.substr(0, eol);
            break;
          }
          const long len = std::stol(buf.substr(1, eol - 1));
          if (len < 0) {
            out = "(nil)";
            break;
          }
          if (buf.size() >= eol + 2 + size_t(len)) {
            out = buf.substr(eol + 2, size_t(len));
            break;
          }
        }
      }
    }
    ::close(fd);
    return out;
  }

 private:
  std::string dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

Bytes value_of(const std::string& key, size_t size = 1000) {
  Bytes v(size);
  for (size_t i = 0; i < v.size(); ++i) v[i] = uint8_t(key[i % key.size()] * 31 + i);
  return v;
}

std::string key(int i) {
  std::string k = "block-";  // not "block-" + to_string(i): GCC 12's -Wrestrict false positive
  k += std::to_string(i);
  return k;
}

class StoreRedis : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir();
    server_ = std::make_unique<RedisServer>(dir_);
    ASSERT_TRUE(server_->start());
  }
  void TearDown() override {
    server_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  RedisTierOptions options(const std::string& prefix = "kvtc:test:") const {
    RedisTierOptions o;
    o.unix_socket = server_->socket_path();
    o.key_prefix = prefix;
    o.connect_timeout_ms = 200;
    o.command_timeout_ms = 300;
    o.reconnect_backoff_min_ms = 50;
    o.reconnect_backoff_max_ms = 200;
    o.pool_size = 2;
    return o;
  }
  std::unique_ptr<RedisTier> tier(const RedisTierOptions& o) const {
    auto t = RedisTier::create(o);
    EXPECT_TRUE(t.is_ok()) << t.status().to_string();
    return t.is_ok() ? std::move(t).value() : nullptr;
  }

  std::string dir_;
  std::unique_ptr<RedisServer> server_;
};

TEST_F(StoreRedis, RoundTripSingleAndBatch) {
  auto t = tier(options());
  ASSERT_TRUE(t);
  EXPECT_TRUE(t->connected());
  EXPECT_EQ(t->name(), "redis");
  ASSERT_TRUE(t->put(key(1), value_of(key(1)), 4000).is_ok());
  auto r = t->get(key(1));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ(**r, value_of(key(1)));
  EXPECT_TRUE(t->contains(key(1)));
  EXPECT_FALSE(t->contains(key(2)));
  auto miss = t->get(key(2));
  ASSERT_TRUE(miss.is_ok());
  EXPECT_FALSE(miss->has_value());
  // The key lives under the prefix, with the 24-byte header in front of the value.
  EXPECT_EQ(server_->command({"STRLEN", "kvtc:test:block-1"}), ":1024");

  std::vector<Entry> entries;
  std::vector<std::string> keys;
  for (int i = 10; i < 30; ++i) {
    entries.push_back({key(i), value_of(key(i), size_t(100 * i)), uint64_t(400 * i)});
    keys.push_back(key(i));
  }
  keys.push_back("absent");
  for (const Status& s : t->put_many(entries)) EXPECT_TRUE(s.is_ok()) << s.to_string();
  auto got = t->get_many(keys);
  ASSERT_EQ(got.size(), keys.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    ASSERT_TRUE(got[i].is_ok() && got[i]->has_value()) << keys[i];
    EXPECT_EQ(**got[i], entries[i].value);
  }
  EXPECT_FALSE(got.back()->has_value());
  auto has = t->contains_many(keys);
  EXPECT_EQ(std::count(has.begin(), has.end(), true), 20);
  EXPECT_FALSE(has.back());

  auto erased = t->erase(key(10));
  ASSERT_TRUE(erased.is_ok());
  EXPECT_TRUE(erased.value());
  EXPECT_FALSE(t->erase(key(10)).value());
  EXPECT_FALSE(t->contains(key(10)));

  // An empty value is a value.
  ASSERT_TRUE(t->put("empty", Bytes{}).is_ok());
  auto e = t->get("empty");
  ASSERT_TRUE(e.is_ok() && e->has_value());
  EXPECT_TRUE((*e)->empty());

  TierMetrics m = t->metrics();
  EXPECT_EQ(m.tier, "redis");
  EXPECT_EQ(m.puts, 22u);
  EXPECT_EQ(m.hits, 22u);
  EXPECT_EQ(m.misses, 2u);
  EXPECT_EQ(m.errors, 0u);
  uint64_t value_bytes = 1000;
  uint64_t raw_bytes = 4000;
  for (const Entry& en : entries) {
    value_bytes += en.value.size();
    raw_bytes += en.raw_bytes;
  }
  EXPECT_EQ(m.bytes_put, value_bytes);
  EXPECT_EQ(m.bytes_raw_put, raw_bytes);
  EXPECT_EQ(m.entries, 21u);  // DBSIZE: 19 batch entries, block-1 and empty
  EXPECT_GT(m.bytes_stored, 0u);
  EXPECT_EQ(m.capacity_bytes, 0u);  // no maxmemory

  auto info = t->server_info();
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_TRUE(info->connected);
  EXPECT_EQ(info->redis_version.substr(0, 1), "7");
  EXPECT_EQ(info->keys, 21u);
}

TEST_F(StoreRedis, TtlAndMaxmemoryAndPrefixes) {
  ASSERT_EQ(server_->command({"CONFIG", "SET", "maxmemory", "100mb"}), "+OK");
  RedisTierOptions o = options("kvtc:model-a:");
  o.ttl_seconds = 100;
  auto a = tier(o);
  auto b = tier(options("kvtc:model-b:"));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->capacity_bytes(), uint64_t(100) << 20);
  ASSERT_TRUE(a->put(key(1), value_of(key(1))).is_ok());
  const std::string ttl = server_->command({"TTL", "kvtc:model-a:block-1"});
  ASSERT_EQ(ttl.substr(0, 1), ":");
  EXPECT_GT(std::stol(ttl.substr(1)), 90);
  // Another prefix is another namespace.
  EXPECT_FALSE(b->get(key(1))->has_value());
  EXPECT_TRUE(a->get(key(1))->has_value());
}

TEST_F(StoreRedis, PipelinedBatchesMatchSingleOperations) {
  auto t = tier(options());
  ASSERT_TRUE(t);
  std::mt19937 rng(7);
  std::vector<Entry> entries;
  for (int i = 0; i < 64; ++i) entries.push_back({key(i), value_of(key(i), 1 + rng() % 5000)});
  // Half put one by one, half in one pipeline; then everything read both ways.
  for (int i = 0; i < 32; ++i) ASSERT_TRUE(t->put(entries[size_t(i)].key, entries[size_t(i)].value).is_ok());
  for (const Status& s : t->put_many(std::span<const Entry>(entries).subspan(32))) ASSERT_TRUE(s.is_ok());
  std::vector<std::string> keys;
  for (int i = 0; i < 80; ++i) keys.push_back(key(i));  // 64..79 absent
  auto batch = t->get_many(keys);
  auto has = t->contains_many(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    auto single = t->get(keys[i]);
    ASSERT_TRUE(single.is_ok() && batch[i].is_ok());
    EXPECT_EQ(single->has_value(), batch[i]->has_value()) << keys[i];
    if (single->has_value()) {
      EXPECT_EQ(**single, **batch[i]);
      EXPECT_EQ(**single, entries[i].value);
    }
    EXPECT_EQ(has[i], t->contains(keys[i]));
    EXPECT_EQ(has[i], i < 64);
  }
  // One round trip per batch, not per key: a batch of 64 gets is far faster than 64 gets would be if
  // each paid a round trip... which on a local socket is too fast to time reliably, so check the
  // server's own count of commands instead: a pipeline sends exactly one command per key.
  const std::string before = server_->command({"INFO", "stats"});
  (void)t->get_many(keys);
  const std::string after = server_->command({"INFO", "stats"});
  auto processed = [](const std::string& info) {
    const size_t p = info.find("total_commands_processed:");
    return std::stoull(info.substr(p + 25));
  };
  EXPECT_EQ(processed(after) - processed(before), keys.size() + 1);  // + the first INFO
}

TEST_F(StoreRedis, ForeignAndGarbledValuesAreMissesAndCorruptions) {
  auto t = tier(options());
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->put(key(1), value_of(key(1))).is_ok());
  ASSERT_TRUE(t->put(key(2), value_of(key(2))).is_ok());
  ASSERT_TRUE(t->put(key(3), value_of(key(3))).is_ok());
  // A foreign string, a flipped byte in a value, a value copied under another key, a hash, a
  // truncated header.
  ASSERT_EQ(server_->command({"SET", "kvtc:test:foreign", "not a kvtc value at all, but long enough"}), "+OK");
  ASSERT_EQ(server_->command({"SETRANGE", "kvtc:test:block-1", "500", "X"}), ":1024");
  const std::string v2 = server_->command({"GET", "kvtc:test:block-2"});
  ASSERT_EQ(v2.size(), 1024u);
  ASSERT_EQ(server_->command({"SET", "kvtc:test:copied", v2}), "+OK");
  ASSERT_EQ(server_->command({"HSET", "kvtc:test:hash", "f", "v"}), ":1");
  ASSERT_EQ(server_->command({"SET", "kvtc:test:short", v2.substr(0, 10)}), "+OK");
  ASSERT_EQ(server_->command({"SETRANGE", "kvtc:test:block-3", "9", "\x7f"}), ":1024");  // the length field

  for (const std::string k : {"foreign", "block-1", "copied", "hash", "short", "block-3"}) {
    auto r = t->get(k);
    ASSERT_TRUE(r.is_ok()) << k << ": " << r.status().to_string();
    EXPECT_FALSE(r->has_value()) << k;
  }
  auto batch = t->get_many(std::vector<std::string>{"foreign", "block-2", "copied"});
  EXPECT_FALSE(batch[0]->has_value());
  EXPECT_TRUE(batch[1]->has_value());
  EXPECT_FALSE(batch[2]->has_value());
  TierMetrics m = t->metrics();
  EXPECT_EQ(m.corruptions, 8u);
  EXPECT_EQ(m.misses, 8u);
  EXPECT_EQ(m.hits, 1u);
  EXPECT_EQ(m.errors, 0u);
}

std::unique_ptr<TieredStore> make_tiered(std::unique_ptr<RedisTier> redis, uint64_t host_bytes = 1 << 20,
                                         const std::string& disk_dir = "") {
  HostTierOptions ho;
  ho.capacity_bytes = host_bytes;
  auto host = HostTier::create(ho);
  EXPECT_TRUE(host.is_ok());
  std::unique_ptr<DiskTier> disk;
  if (!disk_dir.empty()) {
    DiskTierOptions d;
    d.directory = disk_dir;
    d.capacity_bytes = 64 << 20;
    d.sync = false;
    auto opened = DiskTier::open(d);
    EXPECT_TRUE(opened.is_ok()) << opened.status().to_string();
    disk = std::move(opened).value();
  }
  auto s = TieredStore::create(std::move(host).value(), std::move(disk), std::move(redis), TieredStoreOptions{});
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return std::move(s).value();
}

TEST_F(StoreRedis, SecondServerGetsTheFirstServersBlocksThroughRedis) {
  auto first = make_tiered(tier(options()));
  auto second = make_tiered(tier(options()));  // its own empty host tier
  std::vector<Entry> entries;
  std::vector<std::string> keys;
  for (int i = 0; i < 16; ++i) {
    entries.push_back({key(i), value_of(key(i), 2000), 16000});
    keys.push_back(key(i));
  }
  ASSERT_TRUE(first->put(key(100), value_of(key(100)), 8000).is_ok());
  for (const Status& s : first->put_many(std::span<const Entry>(entries))) ASSERT_TRUE(s.is_ok()) << s.to_string();

  EXPECT_FALSE(second->host().contains(key(100)));
  EXPECT_TRUE(second->contains(key(100)));  // through Redis
  auto one = second->get(key(100));
  ASSERT_TRUE(one.is_ok() && one->has_value());
  EXPECT_EQ(**one, value_of(key(100)));
  EXPECT_TRUE(second->host().contains(key(100)));  // promoted
  auto many = second->get_many(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(many[i].is_ok() && many[i]->has_value()) << keys[i];
    EXPECT_EQ(**many[i], entries[i].value);
    EXPECT_TRUE(second->host().contains(keys[i]));
  }
  StoreMetrics m2 = second->store_metrics();
  EXPECT_EQ(m2.promotions, 17u);
  ASSERT_EQ(m2.tiers.size(), 3u);
  EXPECT_EQ(m2.tiers[2].tier, "redis");
  EXPECT_EQ(m2.tiers[2].hits, 17u);
  EXPECT_EQ(m2.tiers[0].hits, 17u);
  // The first store's ratio: what the callers declared over what they put.
  TierMetrics all = first->metrics();
  EXPECT_EQ(all.bytes_put, 1000u + 16 * 2000u);
  EXPECT_EQ(all.bytes_raw_put, 8000u + 16 * 16000u);
  EXPECT_NE(first->metrics_json().find("\"compression_ratio\": 8.0"), std::string::npos);
  EXPECT_NE(first->metrics_prometheus().find("kvtc_store_put_raw_bytes_total{tier=\"all\"} 264000"), std::string::npos);
  EXPECT_NE(first->metrics_prometheus().find("kvtc_store_reconnects_total{tier=\"redis\"} 0"), std::string::npos);
  // An erase reaches Redis too.
  ASSERT_TRUE(second->erase(key(3)).value());
  EXPECT_FALSE(first->redis()->contains(key(3)));
}

// A full server with maxmemory-policy noeviction refuses writes: kIo from the tier, and a TieredStore keeps
// the entry in host and says it was not shared.
TEST_F(StoreRedis, FullServerRefusesWritesAndTheStoreKeepsServing) {
  auto t = tier(options());
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->put(key(1), value_of(key(1))).is_ok());
  ASSERT_EQ(server_->command({"CONFIG", "SET", "maxmemory-policy", "noeviction"}), "+OK");
  ASSERT_EQ(server_->command({"CONFIG", "SET", "maxmemory", "1"}), "+OK");  // less than it holds already
  Status s = t->put(key(2), value_of(key(2)));
  EXPECT_EQ(s.code(), StatusCode::kIo);
  EXPECT_NE(s.message().find("OOM"), std::string::npos) << s.message();
  EXPECT_TRUE(t->connected());  // a refusal is not a lost server
  auto r = t->get(key(1));
  ASSERT_TRUE(r.is_ok() && r->has_value());
  EXPECT_EQ(t->metrics().put_errors, 1u);

  auto store = make_tiered(tier(options()));
  Status p = store->put(key(3), value_of(key(3)));
  EXPECT_EQ(p.code(), StatusCode::kIo);
  EXPECT_NE(p.message().find("stored locally; not shared"), std::string::npos) << p.message();
  auto got = store->get(key(3));
  ASSERT_TRUE(got.is_ok() && got->has_value());
  EXPECT_EQ(store->metrics().puts, 1u);
}

// Without write-through and without disk, Redis takes host's evictions (and only those).
TEST_F(StoreRedis, WithoutWriteThroughRedisTakesHostEvictions) {
  HostTierOptions ho;
  ho.capacity_bytes = 4 * 1100;  // 4 entries of about 1 KB
  ho.policy = EvictionPolicy::kLru;
  TieredStoreOptions so;
  so.redis_write_through = false;
  auto store = std::move(TieredStore::create(std::move(HostTier::create(ho)).value(), nullptr,
                                             tier(options()), so))
                   .value();
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(store->put(key(i), value_of(key(i))).is_ok());
  EXPECT_EQ(store->store_metrics().demotions, 2u);
  EXPECT_EQ(server_->command({"EXISTS", "kvtc:test:block-0"}), ":1");
  EXPECT_EQ(server_->command({"EXISTS", "kvtc:test:block-1"}), ":1");
  EXPECT_EQ(server_->command({"EXISTS", "kvtc:test:block-5"}), ":0");
  for (int i = 0; i < 6; ++i) {
    auto r = store->get(key(i));
    ASSERT_TRUE(r.is_ok() && r->has_value()) << key(i);
    EXPECT_EQ(**r, value_of(key(i)));
  }
}

// The server goes away mid-run and comes back: the store keeps serving from host and disk, nothing held
// there is lost, the tier reconnects by itself and new puts reach Redis again.
TEST_F(StoreRedis, ServerStoppedAndRestartedMidRun) {
  const std::string disk_dir = dir_ + "/disk";
  // Host holds about 8 entries of 1 KB, so most reads while Redis is down come from disk.
  auto store = make_tiered(tier(options()), 8 * 1100, disk_dir);
  RedisTier& redis = *store->redis();
  int next = 0;
  auto put_some = [&](int n, bool expect_shared) {
    for (int i = 0; i < n; ++i, ++next) {
      Status s = store->put(key(next), value_of(key(next)));
      if (expect_shared) {
        ASSERT_TRUE(s.is_ok()) << s.to_string();
      } else {
        ASSERT_EQ(s.code(), StatusCode::kIo) << s.to_string();
        EXPECT_NE(s.message().find("stored locally; not shared"), std::string::npos) << s.message();
      }
    }
  };
  auto all_readable = [&](int upto) {
    for (int i = 0; i < upto; ++i) {
      auto r = store->get(key(i));
      ASSERT_TRUE(r.is_ok()) << r.status().to_string();
      ASSERT_TRUE(r->has_value()) << key(i);
      ASSERT_EQ(**r, value_of(key(i)));
    }
  };
  put_some(30, true);
  all_readable(30);
  EXPECT_EQ(server_->command({"EXISTS", "kvtc:test:block-29"}), ":1");

  server_->stop();
  // What was tried while down: 30 more puts (each lands in host, demotes to disk, and reports that Redis
  // did not get it), reads of all 60 keys (single and batch), and misses that would have gone to Redis.
  put_some(30, false);
  EXPECT_FALSE(redis.connected());
  all_readable(60);
  std::vector<std::string> keys;
  for (int i = 0; i < 60; ++i) keys.push_back(key(i));
  for (auto& r : store->get_many(keys)) ASSERT_TRUE(r.is_ok() && r->has_value());
  auto miss = store->get("never-put");
  ASSERT_TRUE(miss.is_ok());  // a Redis error is a miss of that tier
  EXPECT_FALSE(miss->has_value());
  const uint64_t errors_down = redis.metrics().errors;
  EXPECT_GE(errors_down, 31u);

  ASSERT_TRUE(server_->start());  // empty: --save ""
  // Reconnection happens on a call after the backoff interval (at most 200 ms here).
  const auto t0 = Clock::now();
  Status s;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = store->put(key(next), value_of(key(next)));
  } while (!s.is_ok() && seconds_since(t0) < 3);
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  ++next;
  EXPECT_TRUE(redis.connected());
  put_some(10, true);
  for (int i = 60; i < next; ++i) {
    EXPECT_EQ(server_->command({"EXISTS", "kvtc:test:" + key(i)}), ":1") << key(i);
  }
  all_readable(next);  // nothing held in host or disk was lost
  TierMetrics m = redis.metrics();
  EXPECT_GE(m.reconnects, 1u);
  EXPECT_GE(m.errors, errors_down);
  // A second store sees the blocks put after the restart.
  auto other = make_tiered(tier(options()));
  auto r = other->get(key(next - 1));
  ASSERT_TRUE(r.is_ok() && r->has_value());
}

// A server restarted between two calls (or one that closed an idle connection) costs no error: the
// pooled connection fails before any reply, and the call goes again on a fresh one.
TEST_F(StoreRedis, ServerRestartedBetweenCallsCostsNoError) {
  RedisTierOptions o = options();
  o.pool_size = 1;
  auto t = tier(o);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->put(key(1), value_of(key(1))).is_ok());
  server_->stop();
  ASSERT_TRUE(server_->start());  // empty
  auto r = t->get(key(1));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_FALSE(r->has_value());
  ASSERT_TRUE(t->put(key(1), value_of(key(1))).is_ok());
  // The same after the server closed the connection itself.
  ASSERT_EQ(server_->command({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"}), ":1");
  auto again = t->get(key(1));
  ASSERT_TRUE(again.is_ok() && again->has_value()) << again.status().to_string();
  TierMetrics m = t->metrics();
  EXPECT_EQ(m.errors, 0u);
  EXPECT_EQ(m.reconnects, 2u);
  EXPECT_TRUE(t->connected());
}

// A frozen server (SIGSTOP) makes the first call wait for its command timeout; the calls after it fail
// at once until the backoff interval has passed, so a hundred calls cost a few timeouts, not a hundred.
TEST_F(StoreRedis, CallsWhileDownFailFastThanksToTheBackoff) {
  RedisTierOptions o = options();
  o.command_timeout_ms = 200;
  o.connect_timeout_ms = 200;
  o.reconnect_backoff_min_ms = 100;
  o.reconnect_backoff_max_ms = 400;
  auto t = tier(o);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->put(key(1), value_of(key(1))).is_ok());
  const uint64_t attempts_before = t->connect_attempts();
  server_->freeze();
  const int n_calls = 200;
  int errors = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < n_calls; ++i) {
    auto r = t->get(key(1));
    if (!r.is_ok()) {
      ++errors;
      EXPECT_EQ(r.status().code(), StatusCode::kIo);
    }
    if (i % 20 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double elapsed = seconds_since(t0);
  server_->thaw();
  EXPECT_EQ(errors, n_calls);
  // Without the backoff: n_calls x 200 ms = 40 s. With it: the first timeout, then at most one attempt
  // (connect + 200 ms) per interval of the elapsed time.
  EXPECT_LT(elapsed, 2.0) << "calls while down took " << elapsed << " s";
  EXPECT_LE(t->connect_attempts() - attempts_before, 6u);
  // Thawed, the tier comes back by itself.
  const auto t1 = Clock::now();
  bool back = false;
  while (!back && seconds_since(t1) < 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto r = t->get(key(1));
    back = r.is_ok() && r->has_value();
  }
  EXPECT_TRUE(back);
  EXPECT_GE(t->metrics().reconnects, 1u);
}

TEST_F(StoreRedis, CreateWithoutServer) {
  RedisTierOptions o = options();
  o.unix_socket = dir_ + "/nobody.sock";
  auto lazy = RedisTier::create(o);
  ASSERT_TRUE(lazy.is_ok());
  EXPECT_FALSE(lazy.value()->connected());
  auto r = lazy.value()->get("x");
  EXPECT_EQ(r.status().code(), StatusCode::kIo);
  o.require_server = true;
  EXPECT_EQ(RedisTier::create(o).status().code(), StatusCode::kIo);
  o.unix_socket.clear();
  o.port = 0;
  EXPECT_EQ(RedisTier::create(o).status().code(), StatusCode::kInvalidArgument);
  o.port = 6379;
  o.pool_size = 0;
  EXPECT_EQ(RedisTier::create(o).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(StoreRedis, ThreadsMixingOperations) {
  RedisTierOptions o = options();
  o.pool_size = 3;  // fewer connections than threads: callers wait for one
  auto t = tier(o);
  ASSERT_TRUE(t);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 6; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(uint32_t(200 + th));
      for (int i = 0; i < 300; ++i) {
        const std::string k = key(int(rng() % 48));
        const Bytes v = value_of(k, 100 + k.size() * 50);
        const unsigned op = rng() % 10;
        if (op < 3) {
          if (!t->put(k, v).is_ok()) ++bad;
        } else if (op < 6) {
          auto r = t->get(k);
          if (!r.is_ok() || (r->has_value() && **r != v)) ++bad;
        } else if (op == 6) {
          if (!t->erase(k).is_ok()) ++bad;
        } else if (op == 7) {
          std::vector<Entry> es = {{k, v}, {k + "b", value_of(k + "b", 100 + (k.size() + 1) * 50)}};
          for (const Status& s : t->put_many(es)) bad += s.is_ok() ? 0 : 1;
        } else if (op == 8) {
          std::vector<std::string> ks = {k, k + "b", "absent"};
          auto rs = t->get_many(ks);
          for (size_t j = 0; j < ks.size(); ++j) {
            if (!rs[j].is_ok() || (rs[j]->has_value() && **rs[j] != value_of(ks[j], 100 + ks[j].size() * 50))) ++bad;
          }
        } else {
          (void)t->contains_many(std::vector<std::string>{k, "absent"});
          (void)t->metrics();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  TierMetrics m = t->metrics();
  EXPECT_EQ(m.errors, 0u);
  EXPECT_EQ(m.corruptions, 0u);
  EXPECT_GT(m.hits, 0u);
}

}  // namespace
}  // namespace kvtc::store
