// One-line forwarding of failures inside kvtc (not public).
#pragma once

#include "kvtc/status.hpp"

#define KVTC_CONCAT_INNER(a, b) a##b
#define KVTC_CONCAT(a, b) KVTC_CONCAT_INNER(a, b)

// Return the status if it is not OK.
#define KVTC_RETURN_IF_ERROR(expr) KVTC_RETURN_IF_ERROR_IMPL(KVTC_CONCAT(kvtc_status_, __LINE__), expr)
#define KVTC_RETURN_IF_ERROR_IMPL(tmp, expr) \
  do {                                       \
    ::kvtc::Status tmp = (expr);             \
    if (!tmp.is_ok()) return tmp;            \
  } while (0)

// `KVTC_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result, or returns its status.
#define KVTC_ASSIGN_OR_RETURN(lhs, expr) KVTC_ASSIGN_OR_RETURN_IMPL(KVTC_CONCAT(kvtc_result_, __LINE__), lhs, expr)
#define KVTC_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.is_ok()) return tmp.status();           \
  lhs = std::move(tmp).value()
