// Logging facade over spdlog. Modules log through these functions (never spdlog directly) so the
// sink, format and rank prefix are configured in one place (launch/ and cli/).
//
// Thread-safe. Format strings use fmt syntax: COHORT_LOG_INFO("step {} loss {:.4f}", step, loss).
#pragma once

#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace cohort::logging {

enum class Level { kDebug, kInfo, kWarn, kError };

struct Options {
  Level level = Level::kInfo;
  int rank = 0;             // printed on every line as "[r<rank>]"
  bool color = false;       // ANSI colours when stderr is a TTY
};

// Installs the process-wide logger (stderr sink). Call once from main; safe to call again.
void Init(const Options& options);

// Parses "debug" | "info" | "warn" | "error".
bool ParseLevel(std::string_view s, Level* out);

}  // namespace cohort::logging

#define COHORT_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define COHORT_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define COHORT_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define COHORT_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
