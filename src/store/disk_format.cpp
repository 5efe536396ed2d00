// Disk entries: header encoding, atomic writes (temporary, fsync, rename, fsync of the directory), and
// checked reads.
#include "store/disk_format.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/crc32.hpp"

namespace kvtc::store::detail {

namespace {

constexpr char kMagic[4] = {'K', 'V', 'S', 'T'};

void put_le(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint64_t get_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

std::string errno_text(int e) { return std::strerror(e); }

// For a failed write: the reason, and on a full disk or quota that nothing stored was lost.
std::string write_errno_text(int e) {
  std::string text = errno_text(e);
  if (e == ENOSPC || e == EDQUOT) text += " (disk full; nothing stored was lost)";
  return text;
}

// Reads exactly n bytes at the current offset; false with errno (0 if the file ended) otherwise.
bool read_exact(int fd, uint8_t* out, size_t n) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::read(fd, out + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = 0;
      return false;
    }
    done += size_t(r);
  }
  return true;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Opens a regular file for reading; *size_bytes and *mtime_ns from fstat.
Result<int> open_entry(const std::string& path, uint64_t* size_bytes, int64_t* mtime_ns, bool* missing) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (missing) *missing = errno == ENOENT;
    return io_error(path + ": " + errno_text(errno));
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return io_error(path + ": not a regular file");
  }
  *size_bytes = uint64_t(st.st_size);
  if (mtime_ns) *mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return fd;
}

}  // namespace

Result<EntryHeader> parse_entry_header(const uint8_t* h, uint64_t file_bytes) {
  if (file_bytes < kEntryHeaderBytes) return corrupt("truncated (" + std::to_string(file_bytes) + " bytes)");
  if (std::memcmp(h, kMagic, 4) != 0) return corrupt("bad magic");
  if (crc32_update(0, h, 28) != uint32_t(get_le(h + 28, 4))) return checksum_mismatch("header checksum mismatch");
  const uint16_t version = uint16_t(get_le(h + 4, 2));
  if (version != kEntryVersion) return unsupported("entry format version " + std::to_string(version));
  if (get_le(h + 6, 2) != kEntryHeaderBytes) return corrupt("bad header size");
  EntryHeader e;
  e.key_bytes = uint32_t(get_le(h + 8, 4));
  e.value_bytes = get_le(h + 16, 8);
  e.payload_crc = uint32_t(get_le(h + 24, 4));
  if (e.value_bytes > (uint64_t(1) << 48)) return corrupt("value length out of range");
  if (e.file_bytes() > file_bytes) {
    return corrupt("truncated (" + std::to_string(file_bytes) + " of " + std::to_string(e.file_bytes()) + " bytes)");
  }
  if (e.file_bytes() < file_bytes) return corrupt("trailing bytes after the value");
  return e;
}

std::string entry_file_name(uint64_t key_hash, int collision) {
  char buf[48];
  if (collision == 0) {
    std::snprintf(buf, sizeof buf, "%016llx.kvb", static_cast<unsigned long long>(key_hash));
  } else {
    std::snprintf(buf, sizeof buf, "%016llx-%d.kvb", static_cast<unsigned long long>(key_hash), collision);
  }
  return buf;
}

bool parse_entry_file_name(std::string_view name, uint64_t* key_hash) {
  if (name.size() < 20 || name.substr(name.size() - 4) != ".kvb") return false;
  uint64_t h = 0;
  for (size_t i = 0; i < 16; ++i) {
    const char c = name[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return false;
    }
    h = h << 4 | uint64_t(d);
  }
  const std::string_view rest = name.substr(16, name.size() - 20);
  if (!rest.empty()) {
    if (rest.size() < 2 || rest[0] != '-') return false;
    for (char c : rest.substr(1)) {
      if (c < '0' || c > '9') return false;
    }
  }
  *key_hash = h;
  return true;
}

bool is_temp_file_name(std::string_view name) { return name.find(".kvb.tmp.") != std::string_view::npos; }

Status fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return io_error(dir + ": " + errno_text(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0) return io_error(dir + ": fsync failed: " + errno_text(e));
  return Status::ok();
}

Status write_entry_file(const std::string& dir, const std::string& name, std::string_view key,
                        std::span<const uint8_t> value, bool sync, const std::function<bool()>& before_rename,
                        bool* in_place) {
  if (in_place) *in_place = false;
  static std::atomic<uint64_t> sequence{0};
  uint8_t h[kEntryHeaderBytes] = {};
  std::memcpy(h, kMagic, 4);
  put_le(h + 4, kEntryVersion, 2);
  put_le(h + 6, kEntryHeaderBytes, 2);
  put_le(h + 8, key.size(), 4);
  put_le(h + 16, value.size(), 8);
  put_le(h + 24, crc32_update(crc32_update(0, key.data(), key.size()), value.data(), value.size()), 4);
  put_le(h + 28, crc32_update(0, h, 28), 4);

  const std::string path = dir + "/" + name;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(sequence++);
  Fd f;
  f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (f.fd < 0) return io_error(tmp + ": cannot create: " + write_errno_text(errno));
  auto fail = [&](const std::string& what, int e) {
    ::close(f.fd);
    f.fd = -1;
    ::unlink(tmp.c_str());
    return io_error(path + ": " + what + ": " + write_errno_text(e));
  };
  struct iovec iov[3] = {{h, kEntryHeaderBytes},
                         {const_cast<char*>(key.data()), key.size()},
                         {const_cast<uint8_t*>(value.data()), value.size()}};
  const size_t total = kEntryHeaderBytes + key.size() + value.size();
  size_t done = 0;
  while (done < total) {
    // Skip what is written already.
    struct iovec rest[3];
    int n = 0;
    size_t skip = done;
    for (const auto& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      rest[n++] = {static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip};
      skip = 0;
    }
    const ssize_t w = ::writev(f.fd, rest, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return fail("write failed", w < 0 ? errno : EIO);
    done += size_t(w);
  }
  if (sync && ::fsync(f.fd) != 0) return fail("fsync failed", errno);
  if (::close(f.fd) != 0) {
    f.fd = -1;
    const int e = errno;
    ::unlink(tmp.c_str());
    return io_error(path + ": close failed: " + write_errno_text(e));
  }
  f.fd = -1;
  if (before_rename && !before_rename()) return io_error(path + ": put interrupted before rename (test hook)");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return io_error(path + ": rename failed: " + write_errno_text(e));
  }
  if (in_place) *in_place = true;
  if (sync) {
    Status s = fsync_directory(dir);
    if (!s.is_ok()) {
      return {s.code(), s.message() + " after writing " + name + " (readable, but may not survive a crash)"};
    }
  }
  return Status::ok();
}

Result<EntryContents> read_entry_file(const std::string& path, bool* missing) {
  *missing = false;
  uint64_t size = 0;
  auto fd_or = open_entry(path, &size, nullptr, missing);
  if (!fd_or.is_ok()) return fd_or.status();
  Fd f;
  f.fd = fd_or.value();
  uint8_t h[kEntryHeaderBytes];
  if (size < kEntryHeaderBytes || !read_exact(f.fd, h, kEntryHeaderBytes)) {
    return corrupt(path + ": truncated (" + std::to_string(size) + " bytes)");
  }
  auto header = parse_entry_header(h, size);
  if (!header.is_ok()) return header.status().with_context(path);
  EntryContents c;
  c.key.resize(header->key_bytes);
  c.value.resize(header->value_bytes);
  if (!read_exact(f.fd, reinterpret_cast<uint8_t*>(c.key.data()), c.key.size()) ||
      !read_exact(f.fd, c.value.data(), c.value.size())) {
    if (errno != 0) return io_error(path + ": read failed: " + errno_text(errno));
    return corrupt(path + ": truncated");
  }
  const uint32_t crc = crc32_update(crc32_update(0, c.key.data(), c.key.size()), c.value.data(), c.value.size());
  if (crc != header->payload_crc) return checksum_mismatch(path + ": checksum mismatch");
  return c;
}

Result<EntryInfo> scan_entry_file(const std::string& path, bool verify) {
  EntryInfo info;
  bool missing = false;
  auto fd_or = open_entry(path, &info.file_bytes, &info.mtime_ns, &missing);
  if (!fd_or.is_ok()) return fd_or.status();
  Fd f;
  f.fd = fd_or.value();
  uint8_t h[kEntryHeaderBytes];
  if (info.file_bytes < kEntryHeaderBytes || !read_exact(f.fd, h, kEntryHeaderBytes)) {
    return corrupt("truncated (" + std::to_string(info.file_bytes) + " bytes)");
  }
  auto header = parse_entry_header(h, info.file_bytes);
  if (!header.is_ok()) return header.status();
  info.key.resize(header->key_bytes);
  if (!read_exact(f.fd, reinterpret_cast<uint8_t*>(info.key.data()), info.key.size())) {
    return corrupt("truncated key");
  }
  if (verify) {
    uint32_t crc = crc32_update(0, info.key.data(), info.key.size());
    std::vector<uint8_t> buf(1 << 20);
    uint64_t left = header->value_bytes;
    while (left > 0) {
      const size_t n = size_t(std::min<uint64_t>(left, buf.size()));
      if (!read_exact(f.fd, buf.data(), n)) return corrupt("truncated value");
      crc = crc32_update(crc, buf.data(), n);
      left -= n;
    }
    if (crc != header->payload_crc) return checksum_mismatch("checksum mismatch");
  }
  return info;
}

}  // namespace kvtc::store::detail
