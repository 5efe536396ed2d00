// A full disk gives a clear error and loses nothing already stored: DiskTier, and TieredStore over it.
//
// The filesystem is really full. Each test runs its own body again in a child: the test forks, the
// child enters a private mount namespace (unshare(CLONE_NEWNS) as root, else a user namespace mapping
// the caller to root), mounts a tmpfs of kTmpfsBytes over an empty directory and re-executes this binary
// for that one test, with the directory in KVTC_FULL_DISK_DIR. The re-executed test fills the tmpfs
// with puts until one fails with ENOSPC and checks what is left; the parent checks its exit status and
// the report it writes outside the mount. The mount dies with the child's namespace; nothing is mounted
// where the rest of the machine can see it.
//
// Where no namespace or mount is allowed (a container without CAP_SYS_ADMIN and without user
// namespaces), the child instead runs under a stand-in, and says so (printed, and in the test's
// RecordProperty "full_disk"): setrlimit(RLIMIT_FSIZE) with SIGXFSZ ignored, so that writing past
// kFsizeBytes in one file fails with EFBIG ("File too large"). That exercises the same failure path (a
// write failing midway through a temporary) but not a full filesystem. If neither can be set up the
// test fails with both reasons: it never passes without having filled something.
// KVTC_FULL_DISK_STANDIN=1 in the environment runs the stand-in without trying the tmpfs (to check it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "kvtc/store.hpp"
#include "temp_dir.hpp"

extern char** environ;

namespace kvtc::store {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModeEnv = "KVTC_FULL_DISK_MODE";      // "tmpfs" or "fsize", in the child only
constexpr const char* kDirEnv = "KVTC_FULL_DISK_DIR";        // where the child writes its store
constexpr const char* kReportEnv = "KVTC_FULL_DISK_REPORT";  // a file outside the mount, for the parent
constexpr uint64_t kTmpfsBytes = 256 << 10;
constexpr rlim_t kFsizeBytes = 32 << 10;
constexpr long kTmpfsMagic = 0x01021994;  // TMPFS_MAGIC (linux/magic.h)

enum class Mode { kTmpfs, kFsize };

// The child's mode, or nullptr in the parent (the test as ctest starts it).
const char* child_mode() { return std::getenv(kModeEnv); }
Mode mode() { return std::string(child_mode()) == "tmpfs" ? Mode::kTmpfs : Mode::kFsize; }
std::string child_dir() { return std::getenv(kDirEnv); }

// The failing write's errno: ENOSPC on the tmpfs, EFBIG under RLIMIT_FSIZE.
int expected_errno() { return mode() == Mode::kTmpfs ? ENOSPC : EFBIG; }

void append_report(const std::string& line) {
  std::ofstream(std::getenv(kReportEnv), std::ios::app) << line << "\n";
}

// Value sizes: on the tmpfs from 1,000 to 10,000 bytes, so that the put that fails usually does so
// after a partial write (a few pages landed, the next one did not); under RLIMIT_FSIZE growing past the
// limit.
size_t value_size(int i) {
  return mode() == Mode::kTmpfs ? 1000 + size_t(i) * 2777 % 9000 : 2000 + size_t(i) * 1024;
}

Bytes value_of(const std::string& key, size_t n) {
  Bytes v(n);
  uint32_t x = 2166136261u;
  for (char c : key) x = (x ^ uint8_t(c)) * 16777619u;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = uint8_t(x >> 24);
  }
  return v;
}

uint64_t free_bytes(const std::string& dir) {
  struct statvfs st{};
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return uint64_t(st.f_bavail) * st.f_frsize;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Entry files (*.kvb) in dir; fails the test on anything else but .lock (a temporary left behind).
size_t entry_files_in(const std::string& dir) {
  size_t n = 0;
  for (const std::string& name : names_in(dir)) {
    if (name == ".lock") continue;
    const bool entry = name.size() > 4 && name.substr(name.size() - 4) == ".kvb";
    EXPECT_TRUE(entry) << "left behind in " << dir << ": " << name;
    n += entry;
  }
  return n;
}

// The error of a put that did not fit: kIo, naming the store's directory and the operating system's
// reason.
void expect_clear_error(const Status& s, const std::string& dir) {
  EXPECT_EQ(s.code(), StatusCode::kIo) << s.to_string();
  EXPECT_NE(s.message().find(std::strerror(expected_errno())), std::string::npos) << s.to_string();
  EXPECT_NE(s.message().find(dir), std::string::npos) << s.to_string();
  if (mode() == Mode::kTmpfs) {
    EXPECT_NE(s.message().find("disk full"), std::string::npos) << s.to_string();
  }
}

// What fill() stored, and the put that did not fit.
struct Filled {
  std::map<std::string, Bytes> stored;
  Status failure;  // OK if 5,000 puts all fitted
  std::string failed_key;
  Bytes failed_value;
  uint64_t free_before = 0;  // free bytes in dir just before the failed put
};

// Puts "block-0", "block-1", ... (value_size(i) bytes each) until one fails, at most 5,000.
Filled fill(Tier& tier, const std::string& dir) {
  Filled f;
  for (int i = 0; i < 5000; ++i) {
    const std::string key = "block-" + std::to_string(i);
    Bytes value = value_of(key, value_size(i));
    f.free_before = free_bytes(dir);
    Status s = tier.put(key, value);
    if (!s.is_ok()) {
      f.failure = s;
      f.failed_key = key;
      f.failed_value = std::move(value);
      break;
    }
    f.stored[key] = std::move(value);
  }
  return f;
}

std::unique_ptr<DiskTier> open_disk(const std::string& dir, bool verify = false) {
  DiskTierOptions o;
  o.directory = dir;
  o.capacity_bytes = uint64_t(64) << 20;  // far above the filesystem: the filesystem is the limit
  o.verify_checksums_on_open = verify;
  auto t = DiskTier::open(o);
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  return t.is_ok() ? std::move(t).value() : nullptr;
}

// ---------------------------------------------------------------------------------------------------
// The parent: sets up the child and reads what it reports.

struct SetupError {
  int step = 0;  // index into kSteps
  int err = 0;
};
constexpr const char* kSteps[] = {"unshare(CLONE_NEWNS)", "unshare(CLONE_NEWUSER | CLONE_NEWNS)",
                                  "writing /proc/self/setgroups", "writing /proc/self/uid_map",
                                  "writing /proc/self/gid_map", "mount --make-rprivate /",
                                  "mount -t tmpfs", "setrlimit(RLIMIT_FSIZE)", "signal(SIGXFSZ)", "execve"};

struct ChildOutcome {
  bool set_up = false;  // the child got its filesystem and ran the test binary
  std::string why_not;  // otherwise
  int wait_status = 0;
};

// Only async-signal-safe calls between fork and exec.
bool write_file(const char* path, const char* text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const size_t n = std::strlen(text);
  const bool ok = ::write(fd, text, n) == ssize_t(n);
  ::close(fd);
  return ok;
}

[[noreturn]] void child_fail(int pipe_fd, int step) {
  const SetupError e{step, errno};
  (void)!::write(pipe_fd, &e, sizeof e);
  ::_exit(127);
}

ChildOutcome run_child(const std::string& test_name, Mode how, const std::string& mount_dir,
                       const std::string& report) {
  // Everything the child needs is built before the fork.
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return {false, std::string("readlink /proc/self/exe: ") + std::strerror(errno), 0};
  exe[n] = '\0';
  const std::string filter = "--gtest_filter=" + test_name;
  std::vector<std::string> env_strings = {std::string(kModeEnv) + "=" + (how == Mode::kTmpfs ? "tmpfs" : "fsize"),
                                          std::string(kDirEnv) + "=" + mount_dir,
                                          std::string(kReportEnv) + "=" + report};
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string s = *e;
    if (s.rfind("KVTC_FULL_DISK_", 0) != 0 && s.rfind("GTEST_", 0) != 0) env_strings.push_back(s);
  }
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string arg0 = exe;
  char* argv[] = {arg0.data(), const_cast<char*>(filter.c_str()), nullptr};
  const std::string uid_map = "0 " + std::to_string(::geteuid()) + " 1";
  const std::string gid_map = "0 " + std::to_string(::getegid()) + " 1";
  const std::string tmpfs_options = "size=" + std::to_string(kTmpfsBytes) + ",mode=0700";
  const rlimit fsize{kFsizeBytes, kFsizeBytes};

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {false, std::string("pipe2: ") + std::strerror(errno), 0};
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return {false, std::string("fork: ") + std::strerror(errno), 0};
  if (pid == 0) {
    ::close(fds[0]);
    if (how == Mode::kTmpfs) {
      if (::unshare(CLONE_NEWNS) != 0) {
        if (errno != EPERM) child_fail(fds[1], 0);
        // Not privileged: a user namespace of our own, in which we are root.
        if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) child_fail(fds[1], 1);
        if (!write_file("/proc/self/setgroups", "deny")) child_fail(fds[1], 2);
        if (!write_file("/proc/self/uid_map", uid_map.c_str())) child_fail(fds[1], 3);
        if (!write_file("/proc/self/gid_map", gid_map.c_str())) child_fail(fds[1], 4);
      }
      // Nothing mounted here propagates back to the machine's namespace.
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) child_fail(fds[1], 5);
      if (::mount("kvtc-full-disk", mount_dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options.c_str()) != 0) {
        child_fail(fds[1], 6);
      }
    } else {
      if (::setrlimit(RLIMIT_FSIZE, &fsize) != 0) child_fail(fds[1], 7);
      if (::signal(SIGXFSZ, SIG_IGN) == SIG_ERR) child_fail(fds[1], 8);  // EFBIG instead of a core dump
    }
    ::execve(exe, argv, envp.data());
    child_fail(fds[1], 9);
  }
  ::close(fds[1]);
  SetupError e;
  ssize_t got;
  do {
    got = ::read(fds[0], &e, sizeof e);
  } while (got < 0 && errno == EINTR);
  ::close(fds[0]);
  ChildOutcome out;
  while (::waitpid(pid, &out.wait_status, 0) < 0 && errno == EINTR) {
  }
  if (got == ssize_t(sizeof e)) {
    out.why_not = std::string(kSteps[e.step]) + ": " + std::strerror(e.err);
    return out;
  }
  out.set_up = true;
  return out;
}

// The test as ctest starts it: runs `test_name` again on a full filesystem (or the stand-in) and
// passes if that run passed.
void run_on_full_filesystem(const std::string& test_name) {
  const std::string base = testing::temp_dir();
  const std::string mount_dir = base + "/mnt";
  const std::string report = base + "/report.txt";
  fs::create_directories(mount_dir);
  // KVTC_FULL_DISK_STANDIN=1 skips the tmpfs, to check the stand-in where the tmpfs works.
  const bool standin_asked = std::getenv("KVTC_FULL_DISK_STANDIN") != nullptr;
  ChildOutcome c;
  if (standin_asked) {
    c.why_not = "not tried: KVTC_FULL_DISK_STANDIN is set";
  } else {
    c = run_child(test_name, Mode::kTmpfs, mount_dir, report);
  }
  std::string how = "tmpfs of " + std::to_string(kTmpfsBytes >> 10) + " KiB in a private mount namespace";
  if (!c.set_up) {
    const std::string tmpfs_failed = c.why_not;
    std::printf("[ full disk ] no private tmpfs (%s): STAND-IN: RLIMIT_FSIZE of %llu bytes, EFBIG, "
                "not a full filesystem\n",
                tmpfs_failed.c_str(), static_cast<unsigned long long>(kFsizeBytes));
    c = run_child(test_name, Mode::kFsize, mount_dir, report);
    how = "STAND-IN (no tmpfs: " + tmpfs_failed + "): RLIMIT_FSIZE " + std::to_string(kFsizeBytes) +
          " bytes per file, EFBIG; not a full filesystem";
    if (!c.set_up) {
      fs::remove_all(base);
      GTEST_FAIL() << "neither a full filesystem nor the stand-in could be set up: tmpfs: " << tmpfs_failed
                   << "; RLIMIT_FSIZE: " << c.why_not;
    }
  }
  ::testing::Test::RecordProperty("full_disk", how);
  std::ifstream in(report);
  std::stringstream text;
  text << in.rdbuf();
  std::printf("[ full disk ] %s\n%s", how.c_str(), text.str().c_str());
  fs::remove_all(base);
  if (WIFSIGNALED(c.wait_status)) GTEST_FAIL() << "the child died of signal " << WTERMSIG(c.wait_status);
  ASSERT_TRUE(WIFEXITED(c.wait_status));
  EXPECT_EQ(WEXITSTATUS(c.wait_status), 0) << "the run on the full filesystem failed (its output is above)";
  EXPECT_NE(text.str().find("filled:"), std::string::npos) << "the child ran no test (filter " << test_name << ")";
}

// In the child: the directory really is the tmpfs (or, for the stand-in, the limit is in force).
void expect_the_full_filesystem(const std::string& dir) {
  if (mode() == Mode::kTmpfs) {
    struct statfs st{};
    ASSERT_EQ(::statfs(dir.c_str(), &st), 0) << std::strerror(errno);
    ASSERT_EQ(long(st.f_type), kTmpfsMagic) << dir << " is not the tmpfs";
    ASSERT_LE(uint64_t(st.f_blocks) * uint64_t(st.f_bsize), kTmpfsBytes);
  } else {
    rlimit r{};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &r), 0);
    ASSERT_EQ(r.rlim_cur, kFsizeBytes);
  }
}

// ---------------------------------------------------------------------------------------------------
// DiskTier.
//
// What is tried: puts of 1,000..10,000-byte values until the 256 KiB tmpfs refuses one (ENOSPC, most
// often after part of the temporary was written); a put replacing a stored key with a value that cannot
// fit; the failed put again; a reopen with every checksum verified; erasing a few entries, then the
// failed put once more. What is lost: nothing. Every entry stored before the failure reads back byte
// for byte, before and after the reopen; the replaced key keeps its old value; the space the failed
// writes took is given back (no temporary is left, the free space is what it was), and the reopen
// finds exactly the stored entries, no temporaries and nothing bad.
void disk_tier_scenario() {
  const std::string dir = child_dir() + "/store";
  auto t = open_disk(dir);
  ASSERT_NE(t, nullptr);
  auto [stored, failure, failed_key, failed_value, free_before] = fill(*t, dir);
  ASSERT_FALSE(failure.is_ok()) << "5,000 puts and the filesystem never filled up";
  append_report("filled: DiskTier stored " + std::to_string(stored.size()) + " entries (" +
                std::to_string(t->bytes_used()) + " bytes), then a put of " + std::to_string(failed_value.size()) +
                " bytes with " + std::to_string(free_before) + " bytes free: " + failure.to_string());
  expect_clear_error(failure, dir);
  // On the tmpfs, nobody else writes: the space the failed write took is all given back.
  const bool own_filesystem = mode() == Mode::kTmpfs;
  if (own_filesystem) {
    EXPECT_EQ(free_bytes(dir), free_before) << "the failed put left something behind";
  }
  const TierMetrics m = t->metrics();
  EXPECT_EQ(m.put_errors, 1u);
  EXPECT_EQ(m.errors, 1u);
  EXPECT_EQ(m.puts, stored.size());
  EXPECT_EQ(t->entry_count(), stored.size());
  EXPECT_FALSE(t->contains(failed_key));
  EXPECT_FALSE(t->get(failed_key)->has_value());
  EXPECT_EQ(entry_files_in(dir), stored.size());

  // Replacing a stored entry with bytes that cannot fit keeps the old bytes.
  const std::string& first = stored.begin()->first;
  Status replace = t->put(first, value_of("bigger", mode() == Mode::kTmpfs ? kTmpfsBytes : 2 * kFsizeBytes));
  expect_clear_error(replace, dir);
  // The failed put again: the same clear error, still nothing lost.
  Status again = t->put(failed_key, failed_value);
  expect_clear_error(again, dir);
  if (own_filesystem) {
    EXPECT_EQ(free_bytes(dir), free_before);
  }
  for (const auto& [key, value] : stored) {
    auto r = t->get(key);
    ASSERT_TRUE(r.is_ok()) << key << ": " << r.status().to_string();
    ASSERT_TRUE(r->has_value()) << key << " was lost";
    EXPECT_TRUE(**r == value) << key << " reads back different bytes";
  }
  EXPECT_EQ(t->metrics().corruptions, 0u);

  // Recovery: a reopen (every checksum read) finds exactly what was stored.
  t.reset();
  t = open_disk(dir, /*verify=*/true);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->recovery().entries, stored.size());
  EXPECT_EQ(t->recovery().temp_files_removed, 0u);
  EXPECT_EQ(t->recovery().bad_files_removed, 0u) << ::testing::PrintToString(t->recovery().bad_files);
  for (const auto& [key, value] : stored) {
    auto r = t->get(key);
    ASSERT_TRUE(r.is_ok() && r->has_value()) << key << " was lost by the reopen";
    EXPECT_TRUE(**r == value) << key;
  }

  if (mode() == Mode::kTmpfs) {
    // Room made by erasing a few entries: the put that failed now succeeds.
    uint64_t freed = 0;
    while (freed < failed_value.size() + 8192 && !stored.empty()) {
      const std::string key = stored.begin()->first;
      freed += stored.begin()->second.size();
      ASSERT_TRUE(t->erase(key).value());
      stored.erase(stored.begin());
    }
  }  // (under RLIMIT_FSIZE the limit is per file: a put under it succeeds whatever was erased)
  const std::string later = mode() == Mode::kTmpfs ? failed_key : "small";
  const Bytes later_value = mode() == Mode::kTmpfs ? failed_value : value_of("small", 1000);
  Status ok = t->put(later, later_value);
  ASSERT_TRUE(ok.is_ok()) << ok.to_string();
  stored[later] = later_value;
  EXPECT_TRUE(t->get(later)->value() == later_value);
  EXPECT_EQ(entry_files_in(dir), stored.size());
  t.reset();
  t = open_disk(dir, /*verify=*/true);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->recovery().entries, stored.size());
  EXPECT_EQ(t->recovery().bad_files_removed, 0u);
  append_report("after erasing, the failed put stored; reopen found " + std::to_string(t->recovery().entries) +
                " entries, " + std::to_string(t->recovery().temp_files_removed) + " temporaries, " +
                std::to_string(t->recovery().bad_files_removed) + " bad files");
}

// ---------------------------------------------------------------------------------------------------
// TieredStore (host over disk), write-through.
//
// The documented semantics (tiered_store.cpp, after_host_put): with write_through a put goes to host,
// then to disk, and returns the disk's status; the host copy stays when the disk write fails. So a put
// that finds the disk full returns the disk's kIo (the store's "all" tier counts a put error) and the
// entry is still served from host memory; nothing else changes.
//
// What is tried: puts into a store with 4 MiB of host memory and write-through to a disk tier on the
// 256 KiB tmpfs, until a put fails; then a reopen of the directory. What is lost: nothing. Every entry
// stored before the failure reads back from the store and from disk; the failed one reads back from
// host memory; the reopened disk tier holds exactly the entries written through.
void tiered_write_through_scenario() {
  const std::string dir = child_dir() + "/tiered";
  HostTierOptions ho;
  ho.capacity_bytes = 4 << 20;
  auto host = HostTier::create(ho);
  ASSERT_TRUE(host.is_ok());
  TieredStoreOptions so;
  so.write_through = true;
  auto made = TieredStore::create(std::move(host).value(), open_disk(dir), so);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  auto store = std::move(made).value();
  ASSERT_NE(store->disk(), nullptr);
  auto [stored, failure, failed_key, failed_value, free_before] = fill(*store, dir);
  ASSERT_FALSE(failure.is_ok()) << "5,000 puts and the filesystem never filled up";
  append_report("filled: TieredStore (write-through) stored " + std::to_string(stored.size()) +
                " entries, then: " + failure.to_string());
  expect_clear_error(failure, dir);
  const StoreMetrics m = store->store_metrics();
  EXPECT_EQ(m.tiers[0].put_errors, 1u);  // "all"
  EXPECT_EQ(m.tiers[2].put_errors, 1u);  // "disk"
  EXPECT_EQ(m.tiers[1].puts, stored.size() + 1);  // host took every put, the failed one too
  EXPECT_EQ(m.demotion_errors, 0u);
  // The failed put's bytes are in host memory, and served.
  EXPECT_TRUE(store->host().contains(failed_key));
  EXPECT_FALSE(store->disk()->contains(failed_key));
  EXPECT_TRUE(store->get(failed_key)->value() == failed_value);
  for (const auto& [key, value] : stored) {
    auto r = store->get(key);
    ASSERT_TRUE(r.is_ok() && r->has_value()) << key << " was lost";
    EXPECT_TRUE(**r == value) << key;
    auto d = store->disk()->get(key);
    ASSERT_TRUE(d.is_ok() && d->has_value()) << key << " is not on disk";
    EXPECT_TRUE(**d == value) << key;
  }
  EXPECT_EQ(entry_files_in(dir), stored.size());
  store.reset();
  auto t = open_disk(dir, /*verify=*/true);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->recovery().entries, stored.size());
  EXPECT_EQ(t->recovery().temp_files_removed, 0u);
  EXPECT_EQ(t->recovery().bad_files_removed, 0u);
  append_report("reopen found " + std::to_string(t->recovery().entries) + " entries");
}

// ---------------------------------------------------------------------------------------------------
// TieredStore (host over disk), demotion (no write-through, the default).
//
// The documented semantics: puts go to host; host evictions are written to disk, and one that cannot
// be written is counted in demotion_errors and dropped (the store is a cache); an entry too large for
// host memory goes straight to disk, and its put returns the disk's status.
//
// What is tried: puts of about 3 KiB into 16 KiB of host memory, whose evictions fill the 256 KiB
// tmpfs, until three demotions have failed; then an entry too large for host memory; then a reopen.
// What is lost: exactly the evicted entries counted in demotion_errors, as documented; every put
// returned OK (host took it); every entry host or disk holds reads back byte for byte; the entry too
// large for host is refused with the disk's clear error and changes nothing; the reopened disk tier
// holds exactly what the disk tier held.
void tiered_demotion_scenario() {
  const std::string dir = child_dir() + "/tiered";
  HostTierOptions ho;
  ho.capacity_bytes = mode() == Mode::kTmpfs ? 16 << 10 : 128 << 10;
  ho.policy = EvictionPolicy::kLru;
  auto host = HostTier::create(ho);
  ASSERT_TRUE(host.is_ok());
  auto made = TieredStore::create(std::move(host).value(), open_disk(dir));
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  auto store = std::move(made).value();
  std::map<std::string, Bytes> put;
  int i = 0;
  for (; i < 2000 && store->store_metrics().demotion_errors < 3; ++i) {
    const std::string key = "block-" + std::to_string(i);
    Bytes value = value_of(key, mode() == Mode::kTmpfs ? 2500 + size_t(i) * 131 % 1000 : value_size(i));
    Status s = store->put(key, value);
    ASSERT_TRUE(s.is_ok()) << key << ": " << s.to_string();
    put[key] = std::move(value);
  }
  StoreMetrics m = store->store_metrics();
  ASSERT_GE(m.demotion_errors, 3u) << i << " puts and the filesystem never filled up";
  size_t in_host = 0, on_disk = 0, lost = 0;
  for (const auto& [key, value] : put) {
    const bool h = store->host().contains(key), d = store->disk()->contains(key);
    in_host += h;
    on_disk += d;
    lost += !h && !d;
    // Each tier read directly: a store->get would promote disk hits into host, whose evictions
    // would then fail to demote while this loop counts.
    if (h) {
      auto r = store->host().get(key);
      ASSERT_TRUE(r.is_ok() && r->has_value()) << key;
      EXPECT_TRUE(**r == value) << key;
    }
    if (d) {
      auto r = store->disk()->get(key);
      ASSERT_TRUE(r.is_ok() && r->has_value()) << key;
      EXPECT_TRUE(**r == value) << key;
    }
  }
  append_report("filled: TieredStore (demotion) " + std::to_string(put.size()) + " puts, " +
                std::to_string(m.demotions) + " demotions, " + std::to_string(m.demotion_errors) +
                " failed demotions; host " + std::to_string(in_host) + ", disk " + std::to_string(on_disk) +
                ", dropped " + std::to_string(lost));
  EXPECT_EQ(lost, m.demotion_errors) << "entries lost other than by a counted failed demotion";
  EXPECT_EQ(m.tiers[0].put_errors, 0u);
  EXPECT_EQ(m.tiers[2].corruptions, 0u);

  // Too large for host memory: straight to the full disk, refused clearly; nothing else changes.
  const uint64_t disk_entries = store->disk()->entry_count();
  Status big = store->put("too-big-for-host", value_of("too-big-for-host", ho.capacity_bytes + 1));
  append_report("an entry too large for host memory: " + big.to_string());
  expect_clear_error(big, dir);
  EXPECT_FALSE(store->contains("too-big-for-host"));
  EXPECT_EQ(store->disk()->entry_count(), disk_entries);
  EXPECT_EQ(entry_files_in(dir), disk_entries);
  std::map<std::string, Bytes> on_disk_now;
  for (const auto& [key, value] : put) {
    if (!store->disk()->contains(key)) continue;
    auto d = store->disk()->get(key);
    ASSERT_TRUE(d.is_ok() && d->has_value()) << key;
    EXPECT_TRUE(**d == value) << key;
    on_disk_now[key] = value;
  }
  store.reset();  // host's contents go with it: a cache
  auto t = open_disk(dir, /*verify=*/true);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->recovery().entries, on_disk_now.size());
  EXPECT_EQ(t->recovery().temp_files_removed, 0u);
  EXPECT_EQ(t->recovery().bad_files_removed, 0u);
  for (const auto& [key, value] : on_disk_now) EXPECT_TRUE(t->get(key)->value() == value) << key;
}

void run(const char* test_name, void (*scenario)()) {
  if (child_mode() == nullptr) {
    run_on_full_filesystem(test_name);
    return;
  }
  expect_the_full_filesystem(child_dir());
  if (::testing::Test::HasFatalFailure()) return;
  scenario();
}

TEST(StoreFullDisk, DiskTierRefusesClearlyAndKeepsWhatItHas) {
  run("StoreFullDisk.DiskTierRefusesClearlyAndKeepsWhatItHas", disk_tier_scenario);
}

TEST(StoreFullDisk, TieredWriteThroughReportsTheDiskErrorAndKeepsTheHostCopy) {
  run("StoreFullDisk.TieredWriteThroughReportsTheDiskErrorAndKeepsTheHostCopy", tiered_write_through_scenario);
}

TEST(StoreFullDisk, TieredDemotionToAFullDiskDropsOnlyCountedEvictions) {
  run("StoreFullDisk.TieredDemotionToAFullDiskDropsOnlyCountedEvictions", tiered_demotion_scenario);
}

}  // namespace
}  // namespace kvtc::store
