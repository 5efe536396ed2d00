// kvtc/status.hpp: how every kvtc function reports failure.
//
// Library code never throws across its public boundary and never exits the process. A function that
// can fail returns a Status, or a Result<T> holding either a value or a non-OK Status. The message
// names the problem in words a user can act on ("k.3: expected shape [2, 512, 128], got [2, 511, 128]").
// The numeric codes are stable: the C API (kvtc.h) exposes the same values.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace kvtc {

enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument = 1,   // the caller passed something unusable (bad option, wrong shape, missing field)
  kUnsupported = 2,       // well-formed, but a feature or version this build does not handle
  kCorrupt = 3,           // bytes that do not follow the format (truncated, out-of-range fields)
  kChecksumMismatch = 4,  // a stored checksum does not match the bytes it covers
  kOutOfSpace = 5,        // a caller-provided buffer is too small
  kOutOfMemory = 6,       // an allocation failed
  kIo = 7,                // the operating system refused a read or write
  kCuda = 8,              // a CUDA call failed
  kInternal = 9,          // a bug in kvtc: please report it
  kMismatch = 10,         // two valid inputs that do not belong together (calibration of another model)
};

// Short stable name of a code ("CORRUPT"), for messages and logs.
const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "CORRUPT: chunk 3: checksum mismatch" (or "OK").
  std::string to_string() const;
  // The same status with "context: " put in front of the message; OK stays OK.
  Status with_context(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status checksum_mismatch(std::string m) { return {StatusCode::kChecksumMismatch, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIo, std::move(m)}; }
inline Status mismatch(std::string m) { return {StatusCode::kMismatch, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status that explains why there is none. Constructing from an OK Status is a bug and
// becomes kInternal.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).is_ok()) v_ = internal_error("Result constructed from OK status");
  }
  bool is_ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return is_ok() ? kOkStatus : std::get<Status>(v_);
  }
  // Precondition: is_ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &std::get<T>(v_); }
  const T* operator->() const { return &std::get<T>(v_); }
  T& operator*() & { return std::get<T>(v_); }
  const T& operator*() const& { return std::get<T>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvtc
