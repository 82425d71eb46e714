// The training loop on one rank: data -> forward/backward -> clip -> AdamW -> metrics.
//
// Train() runs a validated JobSpec to completion or until `stop` is set (checked between
// micro-batches, so Ctrl-C returns within one micro-step). Expected failures (unreadable data,
// tokenizer or vocabulary mismatch, a non-finite loss) come back as a Status naming the file or
// field; nothing here calls exit(). Not thread-safe: one Train() per process.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>

#include "common/config.h"
#include "common/status.h"

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
  double tokens_per_second = 0;
};

struct TrainOptions {
  const std::atomic<bool>* stop = nullptr;  // set asynchronously (signal handler) to stop early
  bool progress = false;                    // redraw a progress line on stderr (a TTY)
  std::function<void(const StepMetrics&)> on_step;  // optional observer (tests, benchmarks)
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
};

Result<TrainSummary> Train(const config::JobSpec& spec, const TrainOptions& options);

}  // namespace cohort::worker
