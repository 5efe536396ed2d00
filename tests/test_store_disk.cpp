// DiskTier: round trip, checksums on every read, recovery on open (temporaries, truncated and corrupt
// files), crash safety of puts (an interrupted put, a writer killed with SIGKILL), capacity.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "kvtc/store.hpp"
#include "temp_dir.hpp"

namespace kvtc::store {
namespace {

namespace fs = std::filesystem;

Bytes value_for(const std::string& key, int version, size_t n) {
  Bytes v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(key.size() * 31 + i * 7 + size_t(version) * 13 + uint8_t(key.back()));
  return v;
}

std::unique_ptr<DiskTier> open_dir(const std::string& dir, uint64_t capacity = 1 << 20, bool verify = false,
                                   std::function<bool()> hook = nullptr) {
  DiskTierOptions o;
  o.directory = dir;
  o.capacity_bytes = capacity;
  o.verify_checksums_on_open = verify;
  o.before_rename_hook = std::move(hook);
  auto t = DiskTier::open(o);
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  return t.is_ok() ? std::move(t).value() : nullptr;
}

std::vector<std::string> dir_names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(offset));
  char c = 0;
  f.get(c);
  f.seekp(std::streamoff(offset));
  f.put(char(c ^ 0x20));
}

TEST(StoreDisk, RoundTripAndReopen) {
  const std::string dir = testing::temp_dir() + "/store";
  const std::string binary_key("\x00\x01\xfe\xff-block", 10);
  {
    auto t = open_dir(dir);
    ASSERT_TRUE(t->put("alpha", value_for("alpha", 1, 1000)).is_ok());
    ASSERT_TRUE(t->put(binary_key, value_for(binary_key, 1, 5)).is_ok());
    ASSERT_TRUE(t->put("empty", Bytes{}).is_ok());
    EXPECT_EQ(t->get("alpha")->value(), value_for("alpha", 1, 1000));
    EXPECT_EQ(t->get(binary_key)->value(), value_for(binary_key, 1, 5));
    EXPECT_EQ(t->get("empty")->value(), Bytes{});
    EXPECT_FALSE(t->get("nope")->has_value());
    EXPECT_EQ(t->entry_count(), 3u);
    EXPECT_EQ(t->bytes_used(), 3 * 32 + 5 + 1000 + 10 + 5 + 5 + 0u);
    EXPECT_EQ(fs::path(t->path_of("alpha")).filename().string(), DiskTier::file_name_for("alpha"));
    EXPECT_EQ(fs::file_size(t->path_of("alpha")), 32 + 5 + 1000u);
    ASSERT_TRUE(t->put("alpha", value_for("alpha", 2, 10)).is_ok());  // replaced in place
    // A second writer on the same directory is refused.
    DiskTierOptions again;
    again.directory = dir;
    EXPECT_EQ(DiskTier::open(again).status().code(), StatusCode::kIo);
  }
  auto t = open_dir(dir, 1 << 20, /*verify=*/true);
  EXPECT_EQ(t->recovery().entries, 3u);
  EXPECT_EQ(t->recovery().bad_files_removed, 0u) << ::testing::PrintToString(t->recovery().bad_files);
  EXPECT_EQ(t->get("alpha")->value(), value_for("alpha", 2, 10));
  EXPECT_EQ(t->get(binary_key)->value(), value_for(binary_key, 1, 5));
  EXPECT_TRUE(t->erase("alpha").value());
  EXPECT_FALSE(t->contains("alpha"));
  EXPECT_EQ(dir_names(dir).size(), 3u);  // .lock and two entries
}

TEST(StoreDisk, FlippedByteIsAMissCountedAndRemoved) {
  const std::string dir = testing::temp_dir();
  auto t = open_dir(dir);
  for (const char* k : {"a", "b", "c"}) ASSERT_TRUE(t->put(k, value_for(k, 1, 300)).is_ok());
  const std::string path = t->path_of("b");
  for (uint64_t offset : {uint64_t(32 + 1 + 100)}) flip_byte(path, offset);  // inside the value
  auto r = t->get("b");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_FALSE(r->has_value());
  EXPECT_EQ(t->metrics().corruptions, 1u);
  EXPECT_EQ(t->metrics().misses, 1u);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(t->contains("b"));
  EXPECT_EQ(t->entry_count(), 2u);
  // A flipped header byte (a length) is caught by the header checksum.
  const std::string path_c = t->path_of("c");
  flip_byte(path_c, 8);
  EXPECT_FALSE(t->get("c")->has_value());
  EXPECT_EQ(t->metrics().corruptions, 2u);
  EXPECT_EQ(t->get("a")->value(), value_for("a", 1, 300));
}

TEST(StoreDisk, OpenDropsTruncatedCorruptAndTemporaryFiles) {
  const std::string dir = testing::temp_dir();
  std::string truncated, flipped;
  {
    auto t = open_dir(dir);
    for (const char* k : {"k1", "k2", "k3", "k4"}) ASSERT_TRUE(t->put(k, value_for(k, 1, 200)).is_ok());
    truncated = t->path_of("k2");
    flipped = t->path_of("k3");
  }
  fs::resize_file(truncated, 100);
  flip_byte(flipped, 32 + 2 + 50);
  { std::ofstream(dir + "/" + DiskTier::file_name_for("k9") + ".tmp.4242.0") << "half a write"; }
  { std::ofstream(dir + "/notes.txt") << "not ours"; }
  {
    // Read-only: reports, changes nothing.
    DiskTierOptions ro;
    ro.directory = dir;
    ro.read_only = true;
    ro.verify_checksums_on_open = true;
    auto t = DiskTier::open(ro);
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    EXPECT_EQ((*t)->recovery().entries, 2u);
    EXPECT_EQ((*t)->recovery().temp_files_removed, 1u);
    EXPECT_EQ((*t)->recovery().bad_files_removed, 2u);
    EXPECT_EQ((*t)->put("x", Bytes{1}).code(), StatusCode::kUnsupported);
    EXPECT_TRUE(fs::exists(truncated));
  }
  // Without verification the truncated file is dropped at open; the flipped one on its first read.
  auto t = open_dir(dir);
  const DiskRecovery& rec = t->recovery();
  EXPECT_EQ(rec.entries, 3u);
  EXPECT_EQ(rec.temp_files_removed, 1u);
  EXPECT_EQ(rec.bad_files_removed, 1u);
  ASSERT_EQ(rec.bad_files.size(), 1u);
  EXPECT_NE(rec.bad_files[0].find("truncated"), std::string::npos) << rec.bad_files[0];
  EXPECT_EQ(rec.ignored_files, std::vector<std::string>{"notes.txt"});
  EXPECT_FALSE(fs::exists(truncated));
  EXPECT_FALSE(t->contains("k2"));
  EXPECT_FALSE(t->get("k3")->has_value());
  EXPECT_EQ(t->metrics().corruptions, 2u);  // one at open, one on read
  EXPECT_EQ(t->get("k1")->value(), value_for("k1", 1, 200));
  EXPECT_EQ(t->get("k4")->value(), value_for("k4", 1, 200));
  EXPECT_EQ(dir_names(dir).size(), 4u);  // .lock, k1, k4, notes.txt
}

TEST(StoreDisk, FileHoldingAnotherKeyIsDropped) {
  const std::string dir = testing::temp_dir();
  {
    auto t = open_dir(dir);
    ASSERT_TRUE(t->put("a", value_for("a", 1, 10)).is_ok());
    fs::rename(t->path_of("a"), dir + "/" + DiskTier::file_name_for("b"));
  }
  auto t = open_dir(dir);
  EXPECT_EQ(t->recovery().entries, 0u);
  EXPECT_EQ(t->recovery().bad_files_removed, 1u);
}

TEST(StoreDisk, PutInterruptedBeforeRenameKeepsTheOldValue) {
  const std::string dir = testing::temp_dir();
  auto allow = std::make_shared<std::atomic<bool>>(true);
  {
    auto t = open_dir(dir, 1 << 20, false, [allow] { return allow->load(); });
    ASSERT_TRUE(t->put("key", value_for("key", 1, 500)).is_ok());
    allow->store(false);  // the next put "dies" between writing its temporary and the rename
    Status s = t->put("key", value_for("key", 2, 700));
    EXPECT_EQ(s.code(), StatusCode::kIo);
    EXPECT_EQ(t->get("key")->value(), value_for("key", 1, 500));
    bool temp_left = false;
    for (const std::string& n : dir_names(dir)) temp_left = temp_left || n.find(".tmp.") != std::string::npos;
    EXPECT_TRUE(temp_left);
  }
  auto t = open_dir(dir);
  EXPECT_EQ(t->recovery().temp_files_removed, 1u);
  EXPECT_EQ(t->get("key")->value(), value_for("key", 1, 500));
  EXPECT_EQ(dir_names(dir).size(), 2u);
}

// What was tried: a child process writes and overwrites entries in a loop (values of 4..64 KiB) and is
// killed with SIGKILL mid-run. What was lost: nothing that had been stored; no reopened entry is corrupt,
// and every entry reads back as a complete version of its value.
TEST(StoreDisk, WriterKilledMidWriteNeverServesACorruptBlock) {
  const std::string dir = testing::temp_dir();
  for (int round = 0; round < 3; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      DiskTierOptions o;
      o.directory = dir;
      o.capacity_bytes = 8 << 20;
      o.sync = false;  // SIGKILL does not lose the page cache; rename order is what matters
      auto t = DiskTier::open(o);
      if (!t.is_ok()) ::_exit(3);
      for (int i = 0;; ++i) {
        const std::string key = "blk" + std::to_string(i % 40);
        (void)(*t)->put(key, value_for(key, i % 5, 4096 + size_t(i % 16) * 4096));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + 20 * round));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
    auto t = open_dir(dir, 8 << 20, /*verify=*/true);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->recovery().bad_files_removed, 0u) << ::testing::PrintToString(t->recovery().bad_files);
    EXPECT_GT(t->entry_count(), 0u);
    for (int k = 0; k < 40; ++k) {
      const std::string key = "blk" + std::to_string(k);
      auto r = t->get(key);
      ASSERT_TRUE(r.is_ok());
      if (!r->has_value()) continue;
      const Bytes& v = **r;
      bool matches_a_version = false;
      for (int version = 0; version < 5 && !matches_a_version; ++version) {
        matches_a_version = v == value_for(key, version, v.size());
      }
      EXPECT_TRUE(matches_a_version) << key;
      EXPECT_EQ(v.size() % 4096, 0u);
    }
    EXPECT_EQ(t->metrics().corruptions, 0u);
  }
}

TEST(StoreDisk, CapacityAndLruEviction) {
  const std::string dir = testing::temp_dir();
  const uint64_t entry = 32 + 2 + 68;  // 100 bytes a file
  {
    auto t = open_dir(dir, 5 * entry);
    for (int i = 0; i < 5; ++i) {
      std::string k = "e";
      k += std::to_string(i);
      ASSERT_TRUE(t->put(k, Bytes(68, uint8_t(i))).is_ok());
    }
    ASSERT_TRUE(t->get("e0")->has_value());
    ASSERT_TRUE(t->put("e5", Bytes(68, 5)).is_ok());  // evicts e1, the least recently used
    EXPECT_FALSE(t->contains("e1"));
    EXPECT_TRUE(t->contains("e0"));
    EXPECT_LE(t->bytes_used(), t->capacity_bytes());
    EXPECT_EQ(dir_names(dir).size(), 6u);  // five entries and .lock
    EXPECT_EQ(t->metrics().evictions, 1u);
    EXPECT_EQ(t->put("huge", Bytes(600, 0)).code(), StatusCode::kOutOfSpace);
  }
  auto t = open_dir(dir, 3 * entry);  // a smaller capacity: the oldest files go
  EXPECT_EQ(t->recovery().evicted_over_capacity, 2u);
  EXPECT_EQ(t->entry_count(), 3u);
  EXPECT_LE(t->bytes_used(), 3 * entry);
}

}  // namespace
}  // namespace kvtc::store
