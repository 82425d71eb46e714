// The coordinator's scheduling decision: which queued jobs start now, and on which workers. A pure
// function of the queue, the workers' slots and the running jobs, so it is tested exhaustively
// without processes or clocks (the caller passes `now`).
//
// Policy:
//  - Order: higher priority first; FIFO (submission order) within a priority.
//  - Gang allocation: a job starts with all of its ranks placed, or not at all.
//  - Packing: a job's ranks go to the fewest workers that can hold them: the workers with the most
//    free slots, the last one chosen as the smallest that still fits (best fit), so large free
//    blocks stay whole for large jobs. Each worker gets a contiguous block of ranks.
//  - Backfill (EASY): the first job in order that does not fit gets a reservation: the time at
//    which, as running jobs reach their time limits, it would fit (its "shadow" time), and the
//    slots it would then leave spare. A later job may start ahead of it only if that cannot delay
//    it: it has a time limit and ends before the shadow time, or it uses only the spare slots.
//    Running jobs without a time limit never end as far as the reservation knows; then only jobs
//    with a time limit backfill (so the reserved job waits at most as long as their limits).
//  - A job larger than every up worker's slots together is skipped (it cannot start until workers
//    join) and does not hold a reservation that would block the queue behind it.
//
// Thread safety: pure.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cohort::coordinator {

struct WorkerCapacity {
  std::string name;
  int slots = 0;       // total rank slots
  int used = 0;        // slots held by running attempts
};

struct QueuedJob {
  uint64_t id = 0;
  int priority = 0;
  uint64_t order = 0;       // submission order (or requeue order): FIFO within a priority
  int ranks = 1;
  int64_t time_limit_ms = 0;  // 0: none
};

struct RunningJob {
  uint64_t id = 0;
  std::map<std::string, int> slots;  // worker -> slots held
  int64_t ends_at_ms = 0;            // start + time limit; 0: no limit (never ends, for planning)
};

// Ranks [first_rank, first_rank + count) on `worker`.
struct Placement {
  std::string worker;
  int first_rank = 0;
  int count = 0;
  bool operator==(const Placement&) const = default;
};

struct Start {
  uint64_t job_id = 0;
  std::vector<Placement> placements;
  bool backfilled = false;  // started ahead of the reserved job
};

struct Decision {
  std::vector<Start> starts;  // in the order they were decided
  uint64_t reserved_job = 0;  // the job holding the reservation; 0: none
  int64_t shadow_ms = -1;     // when it is planned to start; -1: unknown (running jobs without limits)
};

// The jobs to start now. `workers` lists the workers that are up.
Decision Schedule(const std::vector<QueuedJob>& queue, const std::vector<WorkerCapacity>& workers,
                  const std::vector<RunningJob>& running, int64_t now_ms);

// Where `ranks` ranks go given free slots per worker (fewest workers, best fit for the last);
// empty if they do not fit. Deterministic: ties go to the worker name that sorts first.
std::vector<Placement> Pack(const std::map<std::string, int>& free, int ranks);

}  // namespace cohort::coordinator
