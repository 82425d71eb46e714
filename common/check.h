// COHORT_CHECK: invariants (bugs, not user errors). On failure prints the condition, file:line and
// any streamed context to stderr, then aborts. Never used for conditions caused by input.
#pragma once

#include <sstream>

namespace cohort::internal {

class CheckFailure {
 public:
  CheckFailure(const char* cond, const char* file, int line);
  [[noreturn]] ~CheckFailure();
  template <typename T>
  CheckFailure& operator<<(const T& v) {
    stream_ << v;
    return *this;
  }

 private:
  std::ostringstream stream_;
};

// Lets `COHORT_CHECK(c) << ...` be an expression of type void.
struct Voidify {
  void operator&(const CheckFailure&) {}
};

}  // namespace cohort::internal

#define COHORT_CHECK(cond)                  \
  (cond) ? (void)0                          \
         : ::cohort::internal::Voidify() &  \
               ::cohort::internal::CheckFailure(#cond, __FILE__, __LINE__)
