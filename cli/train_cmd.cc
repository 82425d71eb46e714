// `cohort train JOB.yaml [--set key=value ...]`: train on this machine.
//
// SIGINT/SIGTERM set a flag the trainer polls between micro-batches; a second SIGINT restores the
// default action so a stuck process can still be killed from the keyboard. (Signal handling moves
// to launch/ with the multi-rank issue.)
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/config.h"
#include "common/logging.h"
#include "worker/trainer.h"

namespace cohort::cli {
namespace {

// Written only by the signal handler; lock-free atomics are async-signal-safe.
std::atomic<bool> g_stop{false};
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

extern "C" void OnStopSignal(int sig) {
  if (g_stop.exchange(true) && sig == SIGINT) {
    // Second Ctrl-C: give up on a clean stop and die of the signal right away.
    ::signal(SIGINT, SIG_DFL);
    ::raise(SIGINT);
    return;
  }
  g_stop_signal.store(sig);
}

void InstallStopHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace

void AddTrainCommand(CLI::App& app, Context& ctx) {
  struct Args {
    std::string file;
    std::vector<std::string> overrides;
    bool no_progress = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* train = app.add_subcommand("train", "Train the model described by a job spec");
  train->add_option("file", args->file, "job spec (YAML)")->required();
  train->add_option("--set", args->overrides,
                    "override a field, e.g. --set train.steps=100 (repeatable)");
  train->add_flag("--no-progress", args->no_progress, "never draw the progress line");
  train->callback([&ctx, args] {
    auto spec = config::LoadJobSpec(args->file, config::Limits(), args->overrides);
    if (!spec.ok()) return ReportError(spec.status(), ctx);
    // Data parallelism is not implemented yet: N copies under a launcher would each train the same
    // model alone and race on outputs, so refuse instead.
    for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "WORLD_SIZE"}) {
      const char* v = std::getenv(var);
      if (v != nullptr && std::atoi(v) > 1) {
        std::fprintf(stderr,
                     "error: launched as one of %s ranks (%s); multi-rank training is not "
                     "implemented in this version\n",
                     v, var);
        ctx.exit_code = kExitUsage;
        return;
      }
    }
    InstallStopHandlers();
    worker::TrainOptions options;
    options.stop = &g_stop;
    options.progress = !args->no_progress && isatty(STDERR_FILENO) != 0;
    auto result = worker::Train(*spec, options);
    if (!result.ok()) {
      COHORT_LOG_ERROR("{}", result.status().ToString());
      ctx.exit_code = ExitCodeFor(result.status());
      return;
    }
    const int sig = g_stop_signal.load();
    ctx.exit_code = result->interrupted ? kExitSignalBase + (sig != 0 ? sig : SIGINT) : kExitOk;
  });
}

}  // namespace cohort::cli
