// Shared by the C API sources (c_api*.cpp): the handle types and the error plumbing.
#pragma once

#include <new>
#include <string>

#include "kvtc/kvtc.h"
#include "kvtc/kvtc.hpp"

struct kvtc_calibration {
  kvtc::Calibration cal;
};
struct kvtc_cache {
  kvtc::KVCache cache;
};
struct kvtc_decoder {
  kvtc::Decoder dec;
};

namespace kvtc::capi {

// Records s as the calling thread's last error ("" on success) and returns its code.
kvtc_status report(const Status& s);

inline kvtc_status ok() { return report(Status::ok()); }
inline kvtc_status null_argument(const char* what) {
  return report(invalid_argument(std::string(what) + " is NULL"));
}

// Runs fn, turning any exception into a status.
template <typename Fn>
kvtc_status guarded(Fn fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return report(Status(StatusCode::kOutOfMemory, "out of memory"));
  } catch (const std::exception& e) {
    return report(internal_error(e.what()));
  } catch (...) {
    return report(internal_error("unknown exception"));
  }
}

}  // namespace kvtc::capi
