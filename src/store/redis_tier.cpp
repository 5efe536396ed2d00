// RedisTier: entries in a Redis server over hiredis. A pool of blocking connections, pipelined batches,
// values framed with a checksummed header, and fail-fast degradation with a reconnect backoff while the
// server is away (include/kvtc/store.hpp, docs/STORE.md).
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "kvtc/store.hpp"
#include "store/counters.hpp"
#include "util/crc32.hpp"

namespace kvtc::store {

using detail::bump;

namespace {

// ---- value framing ---------------------------------------------------------------------------------

constexpr uint8_t kMagic[4] = {'K', 'V', 'R', 'D'};
constexpr uint16_t kVersion = 1;
constexpr size_t kHeaderBytes = 24;
constexpr uint64_t kMaxRedisValueBytes = uint64_t(512) << 20;  // Redis' proto-max-bulk-len default

void put_le(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint64_t get_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

uint32_t entry_crc(std::string_view key, const uint8_t* value, size_t size) {
  return crc32_update(crc32_update(0, key.data(), key.size()), value, size);
}

// The header and the value, as stored in Redis.
Bytes frame(std::string_view key, std::span<const uint8_t> value) {
  Bytes out(kHeaderBytes + value.size());
  uint8_t* h = out.data();
  std::memcpy(h, kMagic, 4);
  put_le(h + 4, kVersion, 2);
  put_le(h + 6, kHeaderBytes, 2);
  put_le(h + 8, value.size(), 8);
  put_le(h + 16, entry_crc(key, value.data(), value.size()), 4);
  put_le(h + 20, crc32_update(0, h, 20), 4);
  if (!value.empty()) std::memcpy(h + kHeaderBytes, value.data(), value.size());
  return out;
}

// The value of a stored string, or nothing if any check fails (foreign, garbled, another key's).
std::optional<Bytes> unframe(std::string_view key, const char* data, size_t size) {
  const auto* p = reinterpret_cast<const uint8_t*>(data);
  if (size < kHeaderBytes || std::memcmp(p, kMagic, 4) != 0) return std::nullopt;
  if (get_le(p + 20, 4) != crc32_update(0, p, 20)) return std::nullopt;
  if (get_le(p + 4, 2) != kVersion || get_le(p + 6, 2) != kHeaderBytes) return std::nullopt;
  const uint64_t n = get_le(p + 8, 8);
  if (n != size - kHeaderBytes) return std::nullopt;
  if (get_le(p + 16, 4) != entry_crc(key, p + kHeaderBytes, n)) return std::nullopt;
  return Bytes(p + kHeaderBytes, p + size);
}

// ---- hiredis helpers -------------------------------------------------------------------------------

struct ReplyFree {
  void operator()(redisReply* r) const {
    if (r != nullptr) freeReplyObject(r);
  }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyFree>;
struct ContextFree {
  void operator()(redisContext* c) const {
    if (c != nullptr) redisFree(c);
  }
};
using ContextPtr = std::unique_ptr<redisContext, ContextFree>;

timeval to_timeval(int ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// hiredis writes with write(2): a server that went away would raise SIGPIPE and kill the process. The
// signal is blocked in this thread for the duration of a pipeline, and one it raised is consumed.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeGuard() {
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{0, 0};
        sigtimedwait(&pipe_, nullptr, &zero);
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t old_{};
  bool was_pending_ = false;
};

// One command's arguments (binary-safe), pointing into memory that outlives the pipeline.
struct Command {
  std::vector<const char*> argv;
  std::vector<size_t> argvlen;
  void add(const void* p, size_t n) {
    argv.push_back(static_cast<const char*>(p));
    argvlen.push_back(n);
  }
  void add(std::string_view s) { add(s.data(), s.size()); }
};

Status unavailable(const std::string& why) { return io_error("redis tier: unavailable: " + why); }

uint64_t parse_u64(std::string_view s) {
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') break;
    v = v * 10 + uint64_t(c - '0');
  }
  return v;
}

// The value of "name:" in an INFO reply.
std::string info_field(std::string_view info, std::string_view name) {
  size_t pos = 0;
  while (pos < info.size()) {
    size_t end = info.find("\r\n", pos);
    if (end == std::string_view::npos) end = info.size();
    const std::string_view line = info.substr(pos, end - pos);
    if (line.size() > name.size() && line.substr(0, name.size()) == name && line[name.size()] == ':') {
      return std::string(line.substr(name.size() + 1));
    }
    pos = end + 2;
  }
  return "";
}

// The second element of CONFIG GET's [name, value] reply, or "" if refused.
std::string config_value(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return "";
  const redisReply* v = r->element[1];
  return v->type == REDIS_REPLY_STRING ? std::string(v->str, v->len) : "";
}

}  // namespace

struct RedisTier::Impl {
  struct Conn {
    ContextPtr ctx;
    uint64_t generation = 0;  // the health generation it was opened in
    bool fresh = false;       // opened for the call that holds it (not yet used)
  };

  RedisTierOptions options;
  std::string endpoint;
  detail::TierCounters counters;

  std::mutex pool_mu;
  std::condition_variable pool_cv;
  std::vector<std::unique_ptr<Conn>> idle;  // guarded by pool_mu

  // Health. `generation` goes up whenever the server is lost, which closes every older connection.
  std::atomic<bool> up{false};
  std::atomic<uint64_t> generation{1};
  std::mutex health_mu;
  int64_t next_try_ms = 0;      // guarded by health_mu: while down, no attempt before this
  int backoff_ms = 0;           // guarded by health_mu
  bool trying = false;          // guarded by health_mu: one attempt at a time while down
  bool ever_connected = false;  // guarded by health_mu
  std::string last_error = "redis tier: unavailable";  // guarded by health_mu: why, in full
  std::atomic<uint64_t> attempts{0};

  std::atomic<uint64_t> maxmemory{0}, used_memory{0}, dbsize{0};

  // A pooled connection, checked out for one call.
  class Lease {
   public:
    Lease(Impl* impl, std::unique_ptr<Conn> c) : impl_(impl), conn_(std::move(c)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (!conn_) return;
      std::lock_guard lock(impl_->pool_mu);
      impl_->idle.push_back(std::move(conn_));
      impl_->pool_cv.notify_one();
    }
    Conn& conn() { return *conn_; }

   private:
    Impl* impl_;
    std::unique_ptr<Conn> conn_;
  };

  std::string key_of(std::string_view key) const {
    std::string k;
    k.reserve(options.key_prefix.size() + key.size());
    k.append(options.key_prefix);
    k.append(key);
    return k;
  }

  // The server was lost while `conn_generation` was current: mark down (once) and start the backoff.
  void lost(uint64_t conn_generation, const std::string& why) {
    std::lock_guard lock(health_mu);
    last_error = unavailable(endpoint + ": " + why).message();
    if (conn_generation != generation.load() || !up.load()) return;  // already known
    up.store(false);
    generation.fetch_add(1);
    backoff_ms = options.reconnect_backoff_min_ms;
    next_try_ms = now_ms() + backoff_ms;
  }

  // Opens one connection and reads maxmemory (which also proves that the server answers).
  Result<ContextPtr> open_one() {
    bump(attempts);
    const timeval connect_tv = to_timeval(options.connect_timeout_ms);
    ContextPtr c(options.unix_socket.empty()
                     ? redisConnectWithTimeout(options.host.c_str(), options.port, connect_tv)
                     : redisConnectUnixWithTimeout(options.unix_socket.c_str(), connect_tv));
    if (!c) return unavailable(endpoint + ": cannot allocate a connection");
    if (c->err != 0) return unavailable(endpoint + ": " + c->errstr);
    if (redisSetTimeout(c.get(), to_timeval(options.command_timeout_ms)) != REDIS_OK) {
      return unavailable(endpoint + ": cannot set the command timeout");
    }
    SigpipeGuard guard;
    ReplyPtr r(static_cast<redisReply*>(redisCommand(c.get(), "CONFIG GET maxmemory")));
    if (!r) return unavailable(endpoint + ": " + (c->err != 0 ? c->errstr : "no reply"));
    const std::string mm = config_value(r.get());
    maxmemory.store(parse_u64(mm));  // refused (renamed CONFIG): 0, unknown
    return c;
  }

  // A connection ready for commands, or kIo at once while the server is away.
  Result<Lease> acquire() {
    std::unique_ptr<Conn> conn;
    {
      std::unique_lock lock(pool_mu);
      pool_cv.wait(lock, [&] { return !idle.empty(); });
      conn = std::move(idle.back());
      idle.pop_back();
    }
    Lease lease(this, std::move(conn));
    Conn& c = lease.conn();
    const uint64_t gen = generation.load();
    if (c.ctx && c.generation == gen && up.load()) return lease;
    c.ctx.reset();
    bool retry = false;  // an attempt while down: at most one per backoff interval
    {
      std::lock_guard lock(health_mu);
      if (!up.load()) {
        const int64_t now = now_ms();
        if (trying || now < next_try_ms) {
          return io_error(last_error + " (next attempt in " +
                          std::to_string(std::max<int64_t>(0, next_try_ms - now)) + " ms)");
        }
        trying = true;
        retry = true;
      }
    }
    Result<ContextPtr> opened = open_one();
    std::lock_guard lock(health_mu);
    if (retry) trying = false;
    if (!opened.is_ok()) {
      last_error = opened.status().message();
      if (retry) {
        backoff_ms = std::min(options.reconnect_backoff_max_ms, backoff_ms * 2);
        next_try_ms = now_ms() + backoff_ms;
      } else if (up.load() && gen == generation.load()) {
        up.store(false);
        generation.fetch_add(1);
        backoff_ms = options.reconnect_backoff_min_ms;
        next_try_ms = now_ms() + backoff_ms;
      }
      return opened.status();
    }
    if (!up.load()) {
      up.store(true);
      backoff_ms = options.reconnect_backoff_min_ms;
      if (ever_connected) bump(counters.reconnects);
    }
    ever_connected = true;
    c.ctx = std::move(opened).value();
    c.generation = generation.load();
    c.fresh = true;
    return lease;
  }

  // One `verb <prefixed key>` command per key, pipelined on one connection (GET, EXISTS, DEL); replies as
  // for pipeline().
  Status pipeline_per_key(Conn& c, const char* verb, std::span<const std::string> keys,
                          std::vector<ReplyPtr>& replies) {
    std::vector<std::string> full(keys.size());  // outlives cmds, which point into it
    std::vector<Command> cmds(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      full[i] = key_of(keys[i]);
      cmds[i].add(verb);
      cmds[i].add(full[i]);
    }
    return pipeline(c, cmds, replies);
  }

  // Sends the commands on one connection and reads their replies in order. A connection error marks the
  // server lost and returns kIo; `replies` then holds the replies read before it (fewer than commands).
  //
  // A pooled connection that the server closed since its last use (a restart, an idle timeout, a proxy)
  // fails before any reply; then one fresh connection is opened and the pipeline sent again, once (every
  // command the tier sends may be repeated), so that a server restarted between two calls costs no error.
  Status pipeline(Conn& c, const std::vector<Command>& commands, std::vector<ReplyPtr>& replies) {
    SigpipeGuard guard;
    int error_number = 0;
    Status s = send_and_read(c, commands, replies, error_number);
    if (!s.is_ok() && c.ctx && replies.empty() && !c.fresh && up.load() &&
        (c.ctx->err == REDIS_ERR_EOF ||
         (c.ctx->err == REDIS_ERR_IO && (error_number == ECONNRESET || error_number == EPIPE)))) {
      Result<ContextPtr> again = open_one();
      if (again.is_ok()) {
        c.ctx = std::move(again).value();
        c.generation = generation.load();
        bump(counters.reconnects);
        s = send_and_read(c, commands, replies, error_number);
      }
    }
    c.fresh = false;
    if (s.is_ok() || !c.ctx) return s;
    const std::string why = c.ctx->err != 0 ? std::string(c.ctx->errstr) : "no reply";
    lost(c.generation, why);
    c.ctx.reset();
    return unavailable(endpoint + ": " + why);
  }

  // One attempt: queue every command, read the replies. Not OK if fewer replies than commands came back
  // (c.ctx->err says why; error_number is errno right after the failed read or write).
  Status send_and_read(Conn& c, const std::vector<Command>& commands, std::vector<ReplyPtr>& replies,
                       int& error_number) {
    replies.clear();
    replies.reserve(commands.size());
    for (const Command& cmd : commands) {
      if (redisAppendCommandArgv(c.ctx.get(), int(cmd.argv.size()), const_cast<const char**>(cmd.argv.data()),
                                 cmd.argvlen.data()) != REDIS_OK) {
        c.ctx.reset();  // a half-queued pipeline: the connection cannot be reused
        return io_error("redis tier: cannot queue a command (out of memory)");
      }
    }
    for (size_t i = 0; i < commands.size() && c.ctx->err == 0; ++i) {
      void* r = nullptr;
      errno = 0;
      if (redisGetReply(c.ctx.get(), &r) != REDIS_OK) {
        error_number = errno;
        break;
      }
      replies.emplace_back(static_cast<redisReply*>(r));
    }
    if (replies.size() == commands.size()) return Status::ok();
    return unavailable(endpoint + ": " + (c.ctx->err != 0 ? std::string(c.ctx->errstr) : "no reply"));
  }

  // Reads used_memory and DBSIZE (for the gauges); quiet: no counters, the cached values on failure.
  Result<RedisServerInfo> info(bool full) {
    RedisServerInfo out;
    out.endpoint = endpoint;
    auto lease = acquire();
    if (!lease.is_ok()) return lease.status();
    std::vector<Command> cmds(full ? 5 : 2);
    cmds[0].add("INFO");
    cmds[0].add("memory");
    cmds[1].add("DBSIZE");
    if (full) {
      cmds[2].add("INFO");
      cmds[2].add("server");
      for (int i : {3, 4}) {
        cmds[size_t(i)].add("CONFIG");
        cmds[size_t(i)].add("GET");
      }
      cmds[3].add("maxmemory");
      cmds[4].add("maxmemory-policy");
    }
    std::vector<ReplyPtr> replies;
    Status s = pipeline(lease->conn(), cmds, replies);
    if (!s.is_ok()) return s;
    if (replies[0]->type == REDIS_REPLY_STRING) {
      used_memory.store(parse_u64(info_field(std::string_view(replies[0]->str, replies[0]->len), "used_memory")));
    }
    if (replies[1]->type == REDIS_REPLY_INTEGER) dbsize.store(uint64_t(std::max<long long>(0, replies[1]->integer)));
    if (full) {
      if (replies[2]->type == REDIS_REPLY_STRING) {
        out.redis_version = info_field(std::string_view(replies[2]->str, replies[2]->len), "redis_version");
      }
      maxmemory.store(parse_u64(config_value(replies[3].get())));
      out.maxmemory_policy = config_value(replies[4].get());
    }
    out.connected = true;
    out.used_memory_bytes = used_memory.load();
    out.keys = dbsize.load();
    out.maxmemory_bytes = maxmemory.load();
    return out;
  }

  // One GET reply: a value, a miss (counted corrupt if it fails a check), or a server error.
  GetResult get_reply(std::string_view key, const redisReply* r) {
    if (r->type == REDIS_REPLY_NIL) {
      bump(counters.misses);
      return std::optional<Bytes>();
    }
    if (r->type == REDIS_REPLY_STRING) {
      std::optional<Bytes> v = unframe(key, r->str, r->len);
      if (v) {
        bump(counters.hits);
        return v;
      }
    } else if (r->type != REDIS_REPLY_ERROR || std::strncmp(r->str, "WRONGTYPE", 9) != 0) {
      bump(counters.errors);
      return io_error("redis tier: GET: server replied: " +
                      (r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len) : std::string("unexpected reply")));
    }
    bump(counters.corruptions);  // garbled, foreign, or not a string at all
    bump(counters.misses);
    return std::optional<Bytes>();
  }

  Status put_reply(const redisReply* r, uint64_t value_bytes, uint64_t raw_bytes) {
    if (r->type == REDIS_REPLY_STATUS) {
      counters.stored(value_bytes, raw_bytes);
      return Status::ok();
    }
    bump(counters.put_errors);
    bump(counters.errors);
    return io_error("redis tier: SET: server replied: " +
                    (r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len) : std::string("unexpected reply")));
  }

  // SET prefix+key frame [EX ttl]; the strings it points to are owned by the caller.
  Command set_command(const std::string& full_key, const Bytes& framed, const std::string& ttl) const {
    Command c;
    c.add("SET");
    c.add(full_key);
    c.add(framed.data(), framed.size());
    if (!ttl.empty()) {
      c.add("EX");
      c.add(ttl);
    }
    return c;
  }

  std::string ttl_text() const { return options.ttl_seconds ? std::to_string(options.ttl_seconds) : std::string(); }

  struct PutItem {
    std::string_view key;
    std::span<const uint8_t> value;
    uint64_t raw_bytes;
  };

  // One pipeline of SETs; a status per item.
  std::vector<Status> put_items(std::span<const PutItem> items) {
    std::vector<Status> out(items.size());
    std::vector<size_t> sent;  // indices of the items in the pipeline
    std::vector<std::string> keys;
    std::vector<Bytes> framed;
    keys.reserve(items.size());
    framed.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].value.size() + kHeaderBytes > kMaxRedisValueBytes) {
        bump(counters.put_errors);
        out[i] = {StatusCode::kOutOfSpace,
                  "redis tier: a value of " + std::to_string(items[i].value.size()) + " bytes exceeds Redis' 512 MiB"};
        continue;
      }
      sent.push_back(i);
      keys.push_back(key_of(items[i].key));
      framed.push_back(frame(items[i].key, items[i].value));
    }
    if (sent.empty()) return out;
    auto fail_rest = [&](size_t from, const Status& s) {
      for (size_t j = from; j < sent.size(); ++j) out[sent[j]] = s;
      bump(counters.put_errors, sent.size() - from);
      bump(counters.errors, sent.size() - from);
    };
    auto lease = acquire();
    if (!lease.is_ok()) {
      fail_rest(0, lease.status());
      return out;
    }
    const std::string ttl = ttl_text();
    std::vector<Command> cmds;
    cmds.reserve(sent.size());
    for (size_t j = 0; j < sent.size(); ++j) cmds.push_back(set_command(keys[j], framed[j], ttl));
    std::vector<ReplyPtr> replies;
    Status s = pipeline(lease->conn(), cmds, replies);
    for (size_t j = 0; j < replies.size(); ++j) {
      out[sent[j]] = put_reply(replies[j].get(), items[sent[j]].value.size(), items[sent[j]].raw_bytes);
    }
    if (!s.is_ok()) fail_rest(replies.size(), s);
    return out;
  }
};

Result<std::unique_ptr<RedisTier>> RedisTier::create(const RedisTierOptions& options) {
  if (options.unix_socket.empty() && (options.host.empty() || options.port <= 0 || options.port > 65535)) {
    return invalid_argument("redis tier: give unix_socket, or host and a port in 1..65535");
  }
  if (options.connect_timeout_ms < 1 || options.command_timeout_ms < 1) {
    return invalid_argument("redis tier: connect_timeout_ms and command_timeout_ms must be at least 1");
  }
  if (options.reconnect_backoff_min_ms < 1 || options.reconnect_backoff_max_ms < options.reconnect_backoff_min_ms) {
    return invalid_argument("redis tier: need 1 <= reconnect_backoff_min_ms <= reconnect_backoff_max_ms");
  }
  if (options.pool_size < 1) return invalid_argument("redis tier: pool_size must be at least 1");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->endpoint = options.unix_socket.empty() ? options.host + ":" + std::to_string(options.port)
                                               : "unix:" + options.unix_socket;
  impl->backoff_ms = options.reconnect_backoff_min_ms;
  for (int i = 0; i < options.pool_size; ++i) impl->idle.push_back(std::make_unique<Impl::Conn>());
  {
    auto lease = impl->acquire();  // connects one connection now, or starts disconnected
    if (!lease.is_ok() && options.require_server) return lease.status();
  }
  return std::unique_ptr<RedisTier>(new RedisTier(std::move(impl)));
}

RedisTier::RedisTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RedisTier::~RedisTier() = default;

const RedisTierOptions& RedisTier::options() const { return impl_->options; }
bool RedisTier::connected() const { return impl_->up.load(); }
uint64_t RedisTier::connect_attempts() const { return impl_->attempts.load(); }
Result<RedisServerInfo> RedisTier::server_info() { return impl_->info(/*full=*/true); }

Status RedisTier::put(std::string_view key, std::span<const uint8_t> value, uint64_t raw_bytes) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  const Impl::PutItem item{key, value, raw_bytes};
  return impl_->put_items(std::span<const Impl::PutItem>(&item, 1)).front();
}

std::vector<Status> RedisTier::put_many(std::span<const Entry> entries) {
  detail::ScopedLatency latency(impl_->counters.put_latency);
  std::vector<Impl::PutItem> items;
  items.reserve(entries.size());
  for (const Entry& e : entries) items.push_back({e.key, e.value, e.raw_bytes});
  return impl_->put_items(items);
}

GetResult RedisTier::get(std::string_view key) {
  const std::string k(key);
  return get_many(std::span<const std::string>(&k, 1)).front();
}

std::vector<GetResult> RedisTier::get_many(std::span<const std::string> keys) {
  detail::ScopedLatency latency(impl_->counters.get_latency);
  Impl& d = *impl_;
  std::vector<GetResult> out(keys.size(), GetResult(std::optional<Bytes>()));
  if (keys.empty()) return out;
  auto lease = d.acquire();
  if (!lease.is_ok()) {
    for (auto& r : out) r = lease.status();
    bump(d.counters.errors, keys.size());
    return out;
  }
  std::vector<ReplyPtr> replies;
  Status s = d.pipeline_per_key(lease->conn(), "GET", keys, replies);
  for (size_t i = 0; i < replies.size(); ++i) out[i] = d.get_reply(keys[i], replies[i].get());
  for (size_t i = replies.size(); i < keys.size(); ++i) out[i] = s;
  bump(d.counters.errors, keys.size() - replies.size());
  return out;
}

bool RedisTier::contains(std::string_view key) {
  const std::string k(key);
  return contains_many(std::span<const std::string>(&k, 1)).front();
}

std::vector<bool> RedisTier::contains_many(std::span<const std::string> keys) {
  Impl& d = *impl_;
  std::vector<bool> out(keys.size(), false);
  if (keys.empty()) return out;
  auto lease = d.acquire();
  if (!lease.is_ok()) {
    bump(d.counters.errors, keys.size());
    return out;
  }
  std::vector<ReplyPtr> replies;
  (void)d.pipeline_per_key(lease->conn(), "EXISTS", keys, replies);  // a failure leaves fewer replies
  for (size_t i = 0; i < replies.size(); ++i) {
    out[i] = replies[i]->type == REDIS_REPLY_INTEGER && replies[i]->integer > 0;
  }
  bump(d.counters.errors, keys.size() - replies.size());
  return out;
}

Result<bool> RedisTier::erase(std::string_view key) {
  Impl& d = *impl_;
  auto lease = d.acquire();
  if (!lease.is_ok()) {
    bump(d.counters.errors);
    return lease.status();
  }
  const std::string k(key);
  std::vector<ReplyPtr> replies;
  Status s = d.pipeline_per_key(lease->conn(), "DEL", std::span<const std::string>(&k, 1), replies);
  if (!s.is_ok()) {
    bump(d.counters.errors);
    return s;
  }
  if (replies[0]->type != REDIS_REPLY_INTEGER) {
    bump(d.counters.errors);
    return io_error("redis tier: DEL: unexpected reply");
  }
  return replies[0]->integer > 0;
}

uint64_t RedisTier::bytes_used() const {
  (void)impl_->info(/*full=*/false);
  return impl_->used_memory.load();
}

uint64_t RedisTier::capacity_bytes() const { return impl_->maxmemory.load(); }

uint64_t RedisTier::entry_count() const {
  (void)impl_->info(/*full=*/false);
  return impl_->dbsize.load();
}

TierMetrics RedisTier::metrics() const {
  TierMetrics m = impl_->counters.snapshot();
  m.tier = name();
  (void)impl_->info(/*full=*/false);
  m.entries = impl_->dbsize.load();
  m.bytes_stored = impl_->used_memory.load();
  m.capacity_bytes = impl_->maxmemory.load();
  return m;
}

}  // namespace kvtc::store
