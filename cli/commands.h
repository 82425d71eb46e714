// Subcommand registration for the `cohort` binary. Each Add*Commands function adds its subcommands
// to `app`; their callbacks store the process exit code in `ctx.exit_code` (0 success, 1 runtime
// failure, 2 bad input) and print errors to stderr. Only cli/ (and launch/) read flags/env vars.
#pragma once

#include <CLI/CLI.hpp>

namespace cohort::cli {

struct Context {
  int exit_code = 0;
  std::string log_level = "info";
};

void AddConfigCommands(CLI::App& app, Context& ctx);  // config_cmd.cc: config check|show
void AddDataCommands(CLI::App& app, Context& ctx);    // data_cmd.cc:   data prepare|inspect
void AddTrainCommand(CLI::App& app, Context& ctx);    // train_cmd.cc:  train

// Exit codes shared by all subcommands.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInterrupted = 130;

}  // namespace cohort::cli
