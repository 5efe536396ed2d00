// Little-endian byte writing and bounds-checked reading for the file formats.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvtc {

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { put(&v, 2); }
  void u32(uint32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void i64(int64_t v) { put(&v, 8); }
  void f64(double v) { put(&v, 8); }
  void bytes(const void* p, size_t n) { put(p, n); }
  size_t size() const { return out_.size(); }

 private:
  // The formats are little-endian; kvtc builds only for little-endian hosts (checked in bytes.cpp).
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  std::vector<uint8_t>& out_;
};

// Reads from [data, data + size). Every read checks the remaining length; after the first failure
// all reads return 0 and ok() stays false, so parsers can read a whole record and check once.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  uint8_t u8() { uint8_t v = 0; get<1>(&v); return v; }
  uint16_t u16() { uint16_t v = 0; get<2>(&v); return v; }
  uint32_t u32() { uint32_t v = 0; get<4>(&v); return v; }
  uint64_t u64() { uint64_t v = 0; get<8>(&v); return v; }
  int64_t i64() { int64_t v = 0; get<8>(&v); return v; }
  double f64() { double v = 0; get<8>(&v); return v; }
  // Returns a pointer to n bytes and skips them, or nullptr (and !ok()) if fewer remain.
  const uint8_t* take(size_t n) {
    if (!ok_ || size_t(end_ - p_) < n) { ok_ = false; return nullptr; }
    const uint8_t* r = p_;
    p_ += n;
    return r;
  }
  size_t remaining() const { return size_t(end_ - p_); }
  bool ok() const { return ok_; }

 private:
  // A constant size, so that the copy compiles to one load (a header holds thousands of chunk entries).
  template <size_t N>
  void get(void* v) {
    const uint8_t* src = take(N);
    if (src != nullptr) std::memcpy(v, src, N);
  }
  const uint8_t* p_;
  const uint8_t* end_;
  bool ok_ = true;
};

}  // namespace kvtc
