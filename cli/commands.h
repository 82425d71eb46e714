// Subcommand registration for the `cohort` binary. Each Add*Commands function adds its subcommands
// to `app`; their callbacks store the process exit code in `ctx.exit_code` (0 success, 1 runtime
// failure, 2 bad input) and print errors to stderr. Only cli/ (and launch/) read flags/env vars.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "common/status.h"

namespace cohort::cli {

struct Context {
  int exit_code = 0;
  std::string log_level = "info";
};

void AddConfigCommands(CLI::App& app, Context& ctx);  // config_cmd.cc: config check|show
void AddDataCommands(CLI::App& app, Context& ctx);    // data_cmd.cc:   data prepare|inspect
void AddTrainCommand(CLI::App& app, Context& ctx);    // train_cmd.cc:  train
void AddLaunchCommand(CLI::App& app, Context& ctx);   // launch_cmd.cc: launch sbatch
void AddCkptCommands(CLI::App& app, Context& ctx);    // ckpt_cmd.cc:   ckpt list|verify
// job_cmd.cc: coordinator, worker, submit, jobs, status, logs, cancel, workers
void AddJobCommands(CLI::App& app, Context& ctx);

// Exit codes shared by all subcommands (documented in README.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // runtime failure (I/O, internal, diverged run)
inline constexpr int kExitUsage = 2;    // bad input: flags, job spec, data files
// Stopped by a signal: 128 + the signal number (130 for SIGINT, 143 for SIGTERM), like a shell.
inline constexpr int kExitSignalBase = 128;

// kExitUsage for errors caused by the user's input (InvalidArgument, NotFound, DataLoss,
// OutOfRange, AlreadyExists), kExitFailure for everything else.
int ExitCodeFor(const Status& s);

// "YYYY-MM-DD HH:MM:SS" in UTC for milliseconds since the Unix epoch.
std::string UtcTime(int64_t unix_ms);

// Prints `text` to stdout line by line, each line prefixed with `indent` (a last line without a
// newline too).
void PrintIndented(const std::string& text, const char* indent);

// Prints "error: <message>" to stderr and stores ExitCodeFor(s) in ctx.exit_code.
void ReportError(const Status& s, Context& ctx);

}  // namespace cohort::cli
