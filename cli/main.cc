// The `cohort` binary: one executable, one subcommand per capability.
#include <unistd.h>

#include <cstdio>

#include "cli/commands.h"
#include "common/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"Cohort: distributed training of GPT-style transformer models", "cohort"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "cohort 0.1.0");
  cohort::cli::Context ctx;
  app.add_option("--log-level", ctx.log_level, "debug | info | warn | error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  app.parse_complete_callback([&ctx] {
    cohort::logging::Options options;
    cohort::logging::ParseLevel(ctx.log_level, &options.level);
    options.color = isatty(STDERR_FILENO) != 0;
    cohort::logging::Init(options);
  });

  cohort::cli::AddConfigCommands(app, ctx);
  cohort::cli::AddDataCommands(app, ctx);
  cohort::cli::AddTrainCommand(app, ctx);
  cohort::cli::AddLaunchCommand(app, ctx);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; every real parse error is bad usage.
    int code = app.exit(e);
    return code == 0 ? 0 : cohort::cli::kExitUsage;
  }
  return ctx.exit_code;
}
