// Status and Result<T>: the only way expected failures cross a module boundary.
//
// A Status is either OK or carries a Code from a small fixed set plus a message that names the
// file, field or peer concerned. Result<T> holds a T or a non-OK Status. Both are cheap to move,
// thread-compatible (no internal synchronization), and [[nodiscard]] so callers cannot drop them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "common/check.h"

namespace cohort {

enum class Code {
  kOk = 0,
  kInvalidArgument,   // bad input from the user: job spec, CLI flag, file contents
  kNotFound,          // a file, key or object that does not exist
  kAlreadyExists,
  kOutOfRange,        // a value or offset outside the allowed range
  kDataLoss,          // corruption: checksum mismatch, truncated file
  kIo,                // an operating-system or library I/O error
  kUnavailable,       // a peer or service that cannot be reached (retry may help)
  kDeadlineExceeded,  // a timeout
  kCancelled,         // stopped on request (signal, cancel)
  kInternal,          // a bug or an unexpected library failure
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: job.yaml: model.n_layer: ..." or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>"; OK stays OK.
  Status WithContext(std::string_view context) const;

  // Explicitly ignores a Status (e.g. best-effort cleanup after another failure).
  void IgnoreError() const {}

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
inline Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
inline Status OutOfRange(std::string m) { return Status(Code::kOutOfRange, std::move(m)); }
inline Status DataLoss(std::string m) { return Status(Code::kDataLoss, std::move(m)); }
inline Status IoError(std::string m) { return Status(Code::kIo, std::move(m)); }
inline Status Cancelled(std::string m) { return Status(Code::kCancelled, std::move(m)); }
inline Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }

// errno-based error "<what>: <strerror(err)>": NotFound for ENOENT/ENOTDIR, Io otherwise.
Status ErrnoError(std::string_view what, int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    COHORT_CHECK(!status_.ok()) << "Result constructed from an OK Status without a value";
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & {
    COHORT_CHECK(ok()) << status_.ToString();
    return *value_;
  }
  const T& value() const& {
    COHORT_CHECK(ok()) << status_.ToString();
    return *value_;
  }
  T&& value() && {
    COHORT_CHECK(ok()) << status_.ToString();
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace cohort

#define COHORT_CONCAT_INNER(a, b) a##b
#define COHORT_CONCAT(a, b) COHORT_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    ::cohort::Status _cohort_status = (expr);     \
    if (!_cohort_status.ok()) return _cohort_status; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a Result or returns its Status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  COHORT_ASSIGN_OR_RETURN_IMPL(COHORT_CONCAT(_cohort_result_, __LINE__), lhs, expr)
#define COHORT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
