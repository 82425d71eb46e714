// The `cohort` binary: one executable, one subcommand per capability.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "cli/commands.h"
#include "common/logging.h"

namespace {

// The soft open-file limit is often 1024 on clusters while the hard one is far higher. Token shards
// give their descriptors back once mapped, but every HDF5 file of a dataset stays open, as do
// sockets to every peer under Gloo: raise the soft limit to the hard one, as many servers do.
void RaiseOpenFileLimit() {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= r.rlim_max) return;
  r.rlim_cur = r.rlim_max == RLIM_INFINITY ? std::max<rlim_t>(r.rlim_cur, 1 << 20) : r.rlim_max;
  setrlimit(RLIMIT_NOFILE, &r);  // best effort: the old limit still works for most jobs
}

}  // namespace

int main(int argc, char** argv) {
  RaiseOpenFileLimit();
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
  cohort::cli::AddCkptCommands(app, ctx);
  cohort::cli::AddJobCommands(app, ctx);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; every real parse error is bad usage.
    int code = app.exit(e);
    return code == 0 ? 0 : cohort::cli::kExitUsage;
  }
  return ctx.exit_code;
}
