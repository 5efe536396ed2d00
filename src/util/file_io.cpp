#include "util/file_io.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/status_macros.hpp"

namespace kvtc {

namespace {

// A read-only descriptor of `path`, refused unless it is a regular file; *size_bytes gets its size.
Result<int> open_regular_file(const std::string& path, size_t* size_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error(path + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return io_error(path + ": not a regular file");
  }
  *size_bytes = size_t(st.st_size);
  return fd;
}

}  // namespace

Result<std::vector<uint8_t>> read_file(const std::string& path) {
  size_t size_bytes = 0;
  KVTC_ASSIGN_OR_RETURN(const int fd, open_regular_file(path, &size_bytes));
  std::vector<uint8_t> bytes(size_bytes);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "file shrank while reading";
      ::close(fd);
      return io_error(path + ": " + why);
    }
    done += size_t(n);
  }
  ::close(fd);
  return bytes;
}

Result<MappedFile> map_file(const std::string& path) {
  MappedFile m;
  KVTC_ASSIGN_OR_RETURN(const int fd, open_regular_file(path, &m.size_bytes));
  if (m.size_bytes == 0) {  // mmap refuses an empty range
    ::close(fd);
    return m;
  }
  void* map = ::mmap(nullptr, m.size_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (map == MAP_FAILED) return io_error(path + ": mmap failed: " + std::strerror(map_errno));
  const size_t n = m.size_bytes;
  m.holder = std::shared_ptr<void>(map, [n](void* p) { ::munmap(p, n); });
  m.data = static_cast<const uint8_t*>(map);
  return m;
}

Status write_file_atomic(const std::string& path, const uint8_t* data, size_t size_bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(path + ": cannot create: " + std::strerror(errno));
  size_t done = 0;
  while (done < size_bytes) {
    const ssize_t n = ::write(fd, data + done, size_bytes - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return io_error(path + ": write failed: " + why);
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return io_error(path + ": flush failed: " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    return io_error(path + ": rename failed: " + why);
  }
  return Status::ok();
}

}  // namespace kvtc
