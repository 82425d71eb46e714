#include <cstdio>
#include <ctime>

#include "cli/commands.h"

namespace cohort::cli {

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return kExitOk;
    case Code::kInvalidArgument:
    case Code::kNotFound:
    case Code::kDataLoss:
    case Code::kOutOfRange:
    case Code::kAlreadyExists: return kExitUsage;
    default: return kExitFailure;
  }
}

void ReportError(const Status& s, Context& ctx) {
  std::fprintf(stderr, "error: %s\n", s.message().c_str());
  ctx.exit_code = ExitCodeFor(s);
}

std::string UtcTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

void PrintIndented(const std::string& text, const char* indent) {
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    std::printf("%s%.*s\n", indent, static_cast<int>(nl - at), text.data() + at);
    at = nl + 1;
  }
}

}  // namespace cohort::cli
