// `cohort train JOB.yaml [--set key=value ...]`: train on this machine, alone or as one rank of a
// data-parallel job started by mpirun, srun or a torchrun-style launcher (launch/ finds out which).
//
// SIGINT/SIGTERM/SIGUSR1 request a stop (launch/signals.h): the run finishes its step and exits
// with 128 + the signal.
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/config.h"
#include "common/logging.h"
#include "launch/bootstrap.h"
#include "launch/signals.h"
#include "launch/world.h"
#include "checkpoint/checkpoint.h"
#include "worker/trainer.h"

namespace cohort::cli {

void AddTrainCommand(CLI::App& app, Context& ctx) {
  struct Args {
    std::string file;
    std::vector<std::string> overrides;
    bool no_progress = false;
    std::string metrics;
    std::string resume = "auto";
  };
  auto args = std::make_shared<Args>();
  CLI::App* train = app.add_subcommand("train", "Train the model described by a job spec");
  train->add_option("file", args->file, "job spec (YAML)")->required();
  train->add_option("--set", args->overrides,
                    "override a field, e.g. --set train.steps=100 (repeatable)");
  train->add_flag("--no-progress", args->no_progress, "never draw the progress line");
  train->add_option("--resume", args->resume,
                    "auto: continue from the newest complete checkpoint in checkpoint.dir (a fresh start "
                    "only when there is none at all); never; or PATH: a step directory or checkpoint root")
      ->capture_default_str();
  train->add_option("--metrics", args->metrics,
                    "write one JSON line per step (loss, lr, grad norm, timings) and a final "
                    "summary to this file (rank 0)");
  train->callback([&ctx, args] {
    auto world = launch::DiscoverWorldFromProcess();
    if (!world.ok()) return ReportError(world.status(), ctx);
    // Every line carries the rank; only rank 0 reports progress (others: warnings and errors).
    logging::Options lo;
    logging::ParseLevel(ctx.log_level, &lo.level);
    lo.rank = world->rank;
    lo.color = isatty(STDERR_FILENO) != 0;
    if (world->rank != 0 && lo.level < logging::Level::kWarn) lo.level = logging::Level::kWarn;
    logging::Init(lo);

    if (!world->note.empty()) COHORT_LOG_WARN("{}", world->note);
    auto spec = config::LoadJobSpec(args->file, config::Limits(), args->overrides);
    if (!spec.ok()) return ReportError(spec.status(), ctx);

    std::unique_ptr<std::ofstream> metrics;
    if (!args->metrics.empty() && world->rank == 0) {
      metrics = std::make_unique<std::ofstream>(args->metrics, std::ios::trunc);
      if (!*metrics) {
        return ReportError(InvalidArgument("--metrics: cannot open '" + args->metrics +
                                           "' for writing"),
                           ctx);
      }
    }

    launch::InstallStopHandlers();
    launch::BootstrapOptions bo;
    bo.backend = spec->parallel.backend;
    bo.timeout = std::chrono::seconds(spec->parallel.timeout_s);
    auto comm = launch::Connect(*world, bo);
    if (!comm.ok()) {
      return ReportError(comm.status().WithContext(world->Describe()), ctx);
    }
    if (world->size > 1) {
      COHORT_LOG_INFO("{}: {} backend, {} node(s)", world->Describe(), (*comm)->backend(),
                      world->nodes);
    }

    worker::TrainOptions options;
    options.stop = launch::StopFlag();
    options.resume = args->resume;
    // Crash tests only (docs/checkpoint-format.md): SIGKILL at a phase of one save.
    if (const char* crash = std::getenv("COHORT_CRASH_AT"); crash != nullptr && *crash != '\0') {
      Status s = checkpoint::SetCrashPointForTesting(crash);
      if (!s.ok()) return ReportError(s.WithContext("COHORT_CRASH_AT"), ctx);
    }
    options.progress = !args->no_progress && isatty(STDERR_FILENO) != 0;
    options.comm = comm->get();
    if (world->local_size_known) {
      options.local_rank = world->local_rank;
      options.local_size = world->local_size;
    }
    if (metrics) {
      options.on_step = [&metrics](const worker::StepMetrics& m) {
        *metrics << fmt::format(
            "{{\"step\": {}, \"loss\": {:.9g}, \"lr\": {:.9g}, \"grad_norm\": {:.9g}, "
            "\"step_ms\": {:.3f}, \"data_ms\": {:.3f}, \"comm_ms\": {:.3f}, "
            "\"comm_exposed_ms\": {:.3f}, \"tokens_per_s\": {:.1f}, \"ckpt_stall_ms\": {:.3f}, "
            "\"ckpts\": {}}}\n",
            m.step, m.loss, m.lr, m.grad_norm, 1e3 * m.step_seconds, 1e3 * m.data_seconds,
            1e3 * m.comm_seconds, 1e3 * m.comm_exposed_seconds, m.tokens_per_second,
            1e3 * m.checkpoint_stall_seconds, m.checkpoints_committed);
        metrics->flush();
      };
    }
    auto result = worker::Train(*spec, options);
    if (!result.ok()) {
      COHORT_LOG_ERROR("{}", result.status().ToString());
      ctx.exit_code = ExitCodeFor(result.status());
      return;
    }
    if (metrics) {
      *metrics << fmt::format(
          "{{\"summary\": true, \"steps\": {}, \"interrupted\": {}, \"world_size\": {}, "
          "\"final_val_loss\": {}, \"param_l2\": {:.17g}, \"param_crc32c\": \"{:08x}\", "
          "\"optimizer_state_floats\": {}, \"tokens_per_s\": {:.1f}, \"resumed_from_step\": {}, "
          "\"checkpoints_committed\": {}, \"last_checkpoint_step\": {}, \"checkpoint_stall_ms\": {:.3f}}}\n",
          result->steps, result->interrupted ? "true" : "false", result->world_size,
          std::isnan(result->final_val_loss) ? std::string("null")
                                             : fmt::format("{:.9g}", result->final_val_loss),
          result->param_l2, result->param_crc32c,
          result->optimizer_state_floats, result->tokens_per_second, result->resumed_from_step,
          result->checkpoints_committed, result->last_checkpoint_step, 1e3 * result->checkpoint_stall_seconds);
    }
    const int sig = launch::StopSignal();
    ctx.exit_code = result->interrupted ? kExitSignalBase + (sig != 0 ? sig : SIGINT) : kExitOk;
  });
}

}  // namespace cohort::cli
