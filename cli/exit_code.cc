#include <cstdio>

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

}  // namespace cohort::cli
