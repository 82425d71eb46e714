// The training loop on one rank: data -> forward/backward (gradients reduced across ranks while
// backward runs) -> clip -> AdamW (whole or ZeRO-1 shard) -> metrics.
//
// Train() runs a validated JobSpec to completion or until `stop` is set. With one rank the stop
// is checked between micro-batches (Ctrl-C returns within one micro-step); with several, every
// rank's flag is combined in the per-step reduction and all ranks stop together after the same
// step, so no rank is left waiting in a collective. Expected failures (unreadable data,
// tokenizer or vocabulary mismatch, a non-finite loss, a failed or timed-out peer) come back as
// a Status naming the file, field or peer; nothing here calls exit(). With several ranks, a
// failure on this rank also aborts the communicator (Communicator::Abort) so the peers fail
// promptly instead of waiting for the collective deadline; under MPI that ends the whole job
// (mpirun exits non-zero) after printing the error with this rank's number.
//
// Data: the samples of data.train in the order of the global sampler (dataloader/sampler.h), read
// ahead by the prefetching loader; rank r of N reads rows [r*B, (r+1)*B) of the global batch of N*B
// samples of every micro-step and validation batch, and gradients are averaged, so N ranks with batch B
// follow the trajectory of one rank with batch N*B up to fp32 summation order. One Train() per
// thread; several threads may train at once as ranks of an in-process group (tests).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/config.h"
#include "common/status.h"
#include "dataloader/sampler.h"

namespace cohort::worker {

// One line of training metrics, also handed to TrainOptions::on_step.
struct StepMetrics {
  int64_t step = 0;            // 1-based optimizer step just completed
  int64_t total_steps = 0;
  double loss = 0;             // mean training loss over the step's micro-batches
  double lr = 0;
  double grad_norm = 0;        // global L2 norm before clipping
  double step_seconds = 0;     // wall time of the whole step
  double data_seconds = 0;     // time spent waiting for batches
  double tokens_per_second = 0;  // global: all ranks together
  double comm_seconds = 0;       // gradient reduction time on the communication thread
  double comm_exposed_seconds = 0;  // part of it not hidden behind backward
  double checkpoint_stall_seconds = 0;  // training stalled for checkpoints so far, all saves together
  int64_t checkpoints_committed = 0;    // by this run so far
};

struct TrainOptions {
  const std::atomic<bool>* stop = nullptr;  // set asynchronously (signal handler) to stop early
  bool progress = false;                    // redraw a progress line on stderr (a TTY)
  std::function<void(const StepMetrics&)> on_step;  // optional observer (tests, benchmarks)
  // The ranks to train with (not owned; used by this thread only during Train). nullptr or a
  // one-rank communicator: train alone.
  collectives::Communicator* comm = nullptr;
  std::vector<float>* final_params = nullptr;  // when set, receives the trained parameters
  // This rank's place among the ranks sharing its node (and so its local files), when the
  // launcher said; 1 = unknown. data.verify splits the checksum pass over these ranks.
  int local_rank = 0;
  int local_size = 1;
  // With checkpoint.dir set: auto (the newest complete checkpoint there, else a fresh start when
  // there is none at all), never, or a path (a step directory or a checkpoint root). See
  // FindResumeCandidates (worker/checkpointer.h).
  std::string resume = "auto";
};

struct TrainSummary {
  int64_t steps = 0;          // optimizer steps completed
  bool interrupted = false;   // stopped by `stop` before train.steps
  double first_loss = std::numeric_limits<double>::quiet_NaN();
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  double initial_val_loss = std::numeric_limits<double>::quiet_NaN();  // before the first step
  double final_val_loss = std::numeric_limits<double>::quiet_NaN();    // after the last step
  double tokens_per_second = 0;  // mean over steps after the first
  int64_t num_parameters = 0;
  int world_size = 1;
  double param_l2 = 0;        // L2 norm of the final parameters (identical on every rank)
  uint32_t param_crc32c = 0;  // CRC32C of the final parameter bytes (bit-exactness checks)
  size_t optimizer_state_floats = 0;  // AdamW m + v held by this rank (ZeRO-1: ~1/N)
  data::DataState data_state;        // after the last step: where a resume continues
  double data_wait_seconds = 0;      // time this rank waited for batches, over the whole run
  int64_t resumed_from_step = -1;    // the checkpoint's step, or -1 for a fresh start
  int64_t checkpoints_committed = 0;
  int64_t last_checkpoint_step = -1;
  double checkpoint_stall_seconds = 0;  // training time spent in Save (snapshots), over the run
};

Result<TrainSummary> Train(const config::JobSpec& spec, const TrainOptions& options);

}  // namespace cohort::worker
