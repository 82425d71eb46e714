// Small text formatting helpers shared by modules (log lines, CLI output). Pure, thread-safe.
#pragma once

#include <cstdint>
#include <string>

namespace cohort {

// 1234567 -> "1,234,567".
inline std::string WithThousands(uint64_t v) {
  const std::string digits = std::to_string(v);
  std::string s;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(digits[i]);
  }
  return s;
}

}  // namespace cohort
