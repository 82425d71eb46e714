#include "common/logging.h"

#include <memory>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace cohort::logging {

void Init(const Options& options) {
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (options.color) {
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  }
  auto logger = std::make_shared<spdlog::logger>("cohort", std::move(sink));
  // One readable line per event: time, level, rank, message.
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ [r" + std::to_string(options.rank) + "] %v");
  switch (options.level) {
    case Level::kDebug: logger->set_level(spdlog::level::debug); break;
    case Level::kInfo: logger->set_level(spdlog::level::info); break;
    case Level::kWarn: logger->set_level(spdlog::level::warn); break;
    case Level::kError: logger->set_level(spdlog::level::err); break;
  }
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

bool ParseLevel(std::string_view s, Level* out) {
  if (s == "debug") *out = Level::kDebug;
  else if (s == "info") *out = Level::kInfo;
  else if (s == "warn") *out = Level::kWarn;
  else if (s == "error") *out = Level::kError;
  else return false;
  return true;
}

}  // namespace cohort::logging
